package api

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voltvmm/volt/vmm/api/microhttp"
	"github.com/voltvmm/volt/vmm/api/types"

	"github.com/voltvmm/volt/vmm"
)

// Each fuzzer sends arbitrary bytes as the body of one endpoint, to a
// fresh instance before and after InstanceStart, through the real handler
// and controller over fake machines. Whatever the body, the answer must be
// 204/200 or a 400 with a swagger Error body: never a panic (which the
// handler would turn into a 500) and never a silent hang.

// fuzzSandbox is the only directory the fuzzers let the controller create
// files in: bodies naming log or metrics paths elsewhere are only decoded
// and validated, or a fuzzer could write anywhere on the host.
func fuzzSandbox(f *testing.F) (dir, kernel string) {
	dir = f.TempDir()
	kernel = filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		f.Fatal(err)
	}
	return dir, kernel
}

func fuzzController(kernel string) *Controller {
	return NewController(Options{
		LogOutput: io.Discard,
		Base:      vmm.Config{KernelPath: kernel},
		Build:     func(cfg vmm.Config) (Machine, error) { return newFake(cfg), nil },
	})
}

// writesOutside reports whether a body asks for a file outside the sandbox.
func writesOutside(body []byte, sandbox string) bool {
	var fields map[string]any
	if json.Unmarshal(body, &fields) != nil {
		return false // cannot decode, so cannot reach the file system
	}
	for _, k := range []string{"log_path", "metrics_path"} {
		for key, v := range fields {
			if !strings.EqualFold(key, k) {
				continue
			}
			p, ok := v.(string)
			if !ok {
				continue
			}
			if p == "" || filepath.Dir(filepath.Clean(p)) != sandbox {
				return true
			}
		}
	}
	return false
}

func fuzzEndpoint(f *testing.F, method, path string, seeds ...string) {
	sandbox, kernel := fuzzSandbox(f)
	for _, s := range seeds {
		f.Add(strings.NewReplacer("SANDBOX", sandbox, "KERNEL", kernel).Replace(s))
	}
	f.Add("")
	f.Add("{}")
	f.Add("null")
	f.Add(`{"a":`)
	f.Fuzz(func(t *testing.T, body string) {
		if writesOutside([]byte(body), sandbox) {
			return
		}
		for _, started := range []bool{false, true} {
			c := fuzzController(kernel)
			if started {
				if err := c.Start(); err != nil {
					t.Fatal(err)
				}
			}
			resp := c.Handler().ServeAPI(context.Background(), &microhttp.Request{Method: method, Path: path, Body: []byte(body)})
			c.Close()
			switch resp.Status {
			case statusOK, statusNoContent:
			case statusBadRequest:
				var e types.Error
				if err := json.Unmarshal(resp.Body, &e); err != nil || e.FaultMessage == "" {
					t.Fatalf("400 without a fault message: %q", resp.Body)
				}
				if err := checkSwagger("Error", resp.Body); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("status %d for %q: %s", resp.Status, body, resp.Body)
			}
		}
	})
}

func FuzzPutBootSource(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/boot-source",
		`{"kernel_image_path": "KERNEL", "boot_args": "console=ttyS0 reboot=k", "initrd_path": "KERNEL"}`,
		`{"kernel_image_path": "/nonexistent"}`)
}

func FuzzPutMachineConfig(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/machine-config",
		`{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "cpu_template": "None", "track_dirty_pages": true, "huge_pages": "2M"}`,
		`{"vcpu_count": 33, "mem_size_mib": 1e3}`)
}

func FuzzPatchMachineConfig(f *testing.F) {
	fuzzEndpoint(f, "PATCH", "/machine-config", `{"vcpu_count": 4}`, `{"huge_pages": "2M", "mem_size_mib": 3}`)
}

func FuzzPutActions(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/actions",
		`{"action_type": "InstanceStart"}`, `{"action_type": "SendCtrlAltDel"}`, `{"action_type": "FlushMetrics"}`)
}

func FuzzPatchVM(f *testing.F) {
	fuzzEndpoint(f, "PATCH", "/vm", `{"state": "Paused"}`, `{"state": "Resumed"}`)
}

func FuzzPutLogger(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/logger",
		`{"log_path": "SANDBOX/log", "level": "Debug", "show_level": true, "show_log_origin": true, "module": "api"}`, `{"level": "off"}`)
}

func FuzzPutMetrics(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/metrics", `{"metrics_path": "SANDBOX/metrics"}`)
}

func FuzzPutDrive(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/drives/rootfs",
		`{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false, "partuuid": "x", "cache_type": "Unsafe", "io_engine": "Async", "rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 10, "refill_time": 100}, "ops": {"size": 1, "refill_time": 1}}}`)
}

func FuzzPutNetworkInterface(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/network-interfaces/eth0",
		`{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "mtu": 1500, "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}`)
}

func FuzzPutVsock(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": "v"}`)
}

func FuzzPutEntropy(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/entropy", `{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}`)
}

func FuzzPutSnapshotCreate(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}`)
}

func FuzzPutSnapshotLoad(f *testing.F) {
	fuzzEndpoint(f, "PUT", "/snapshot/load",
		`{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}, "track_dirty_pages": true, "resume_vm": true, "network_overrides": [{"iface_id": "a", "host_dev_name": "b"}], "vsock_override": {"uds_path": "/v"}, "clock_realtime": true}`)
}

// FuzzRequestLine sends arbitrary methods and paths with a small body.
func FuzzRequestLine(f *testing.F) {
	_, kernel := fuzzSandbox(f)
	for _, s := range [][2]string{{"GET", "/"}, {"GET", "/vm/config"}, {"PUT", "/drives/x"}, {"PATCH", "/drives/"}, {"GET", "/balloon/statistics"}, {"PUT", "/network-interfaces/a/b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		c := fuzzController(kernel)
		defer c.Close()
		resp := c.Handler().ServeAPI(context.Background(), &microhttp.Request{Method: method, Path: path, Body: []byte(`{}`)})
		if resp.Status != 200 && resp.Status != 204 && resp.Status != 400 {
			t.Fatalf("%s %q: status %d %s", method, path, resp.Status, resp.Body)
		}
	})
}

// FuzzConfigFile parses arbitrary config files; whatever parses must
// survive a round trip through its own encoding.
func FuzzConfigFile(f *testing.F) {
	f.Add(`{"boot-source": {"kernel_image_path": "/k", "boot_args": "x"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}, "drives": [], "network-interfaces": [], "logger": {"level": "Info"}, "metrics": {"metrics_path": "/m"}, "balloon": null}`)
	f.Add(`{"boot-source": null}`)
	f.Fuzz(func(t *testing.T, data string) {
		cf, err := ParseConfigFile([]byte(data))
		if err != nil {
			return
		}
		again, err := json.Marshal(cf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseConfigFile(again); err != nil {
			t.Fatalf("re-encoded config %s does not parse: %v", again, err)
		}
	})
}
