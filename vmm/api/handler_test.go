package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/microhttp"
	"github.com/voltvmm/volt/vmm/api/types"
)

// fakeMachine stands in for a VM where the test is about the API, not the
// guest.
type fakeMachine struct {
	mu         sync.Mutex
	cfg        vmm.Config
	paused     bool
	ctrlAltDel int
	closed     bool
	stop       chan vmm.Result
	once       sync.Once
}

func newFake(cfg vmm.Config) *fakeMachine {
	return &fakeMachine{cfg: cfg, stop: make(chan vmm.Result, 1)}
}

func (f *fakeMachine) Run(context.Context) vmm.Result { return <-f.stop }

func (f *fakeMachine) end(r vmm.Result) { f.once.Do(func() { f.stop <- r }) }

func (f *fakeMachine) Pause() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = true
	return nil
}

func (f *fakeMachine) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = false
	return nil
}

func (f *fakeMachine) Stop() { f.end(vmm.Result{Reason: vmm.StopCanceled}) }

func (f *fakeMachine) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeMachine) SendCtrlAltDel() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ctrlAltDel++
	return nil
}

func (f *fakeMachine) Metrics() vmm.Metrics {
	f.mu.Lock()
	defer f.mu.Unlock()
	return vmm.Metrics{VCPUs: f.cfg.CPUs, MemoryBytes: f.cfg.MemorySize, Started: true, Paused: f.paused}
}

func (f *fakeMachine) BootStages() []vmm.Stage { return nil }

// fakeEnv is a controller over fake machines, its handler called directly.
type fakeEnv struct {
	t      *testing.T
	c      *Controller
	h      microhttp.Handler
	kernel string
	mu     sync.Mutex
	built  []*fakeMachine
	fail   error // returned by Build when set
	// gate, when set, makes Build wait until it is closed (a long start).
	gate chan struct{}
}

func newFakeEnv(t *testing.T) *fakeEnv {
	t.Helper()
	e := &fakeEnv{t: t}
	e.kernel = filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(e.kernel, []byte("not really a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.c = NewController(Options{
		ID:         "test-vm",
		VMMVersion: "test",
		LogOutput:  io.Discard,
		Build: func(cfg vmm.Config) (Machine, error) {
			e.mu.Lock()
			gate := e.gate
			e.mu.Unlock()
			if gate != nil {
				<-gate
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.fail != nil {
				return nil, e.fail
			}
			m := newFake(cfg)
			e.built = append(e.built, m)
			return m, nil
		},
	})
	e.h = e.c.Handler()
	t.Cleanup(func() { e.c.Close() })
	return e
}

func (e *fakeEnv) machine() *fakeMachine {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.built) == 0 {
		e.t.Fatal("no machine built")
	}
	return e.built[len(e.built)-1]
}

// do sends a request and checks the status; it returns the body.
func (e *fakeEnv) do(method, path, body string, wantStatus int) []byte {
	e.t.Helper()
	resp := e.h.ServeAPI(context.Background(), &microhttp.Request{Method: method, Path: path, Body: []byte(body)})
	if resp.Status != wantStatus {
		e.t.Fatalf("%s %s %s: status %d, want %d; body %s", method, path, body, resp.Status, wantStatus, resp.Body)
	}
	if resp.Status == statusNoContent && len(resp.Body) != 0 {
		e.t.Fatalf("%s %s: 204 with a body %q", method, path, resp.Body)
	}
	if resp.Status >= 400 {
		if err := checkSwagger("Error", resp.Body); err != nil {
			e.t.Fatalf("%s %s: error body: %v", method, path, err)
		}
	}
	return resp.Body
}

// fault returns the fault message of a 400 answer.
func (e *fakeEnv) fault(method, path, body string) string {
	e.t.Helper()
	var er types.Error
	if err := json.Unmarshal(e.do(method, path, body, statusBadRequest), &er); err != nil {
		e.t.Fatal(err)
	}
	return er.FaultMessage
}

func (e *fakeEnv) get(path, definition string) []byte {
	e.t.Helper()
	b := e.do("GET", path, "", statusOK)
	if err := checkSwagger(definition, b); err != nil {
		e.t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
	return b
}

func (e *fakeEnv) state() string {
	e.t.Helper()
	var info types.InstanceInfo
	if err := json.Unmarshal(e.get("/", "InstanceInfo"), &info); err != nil {
		e.t.Fatal(err)
	}
	return info.State
}

func TestFirecrackerSequenceOnFakeMachine(t *testing.T) {
	e := newFakeEnv(t)
	if s := e.state(); s != "Not started" {
		t.Fatalf("state %q before start", s)
	}
	var v types.FirecrackerVersion
	json.Unmarshal(e.get("/version", "FirecrackerVersion"), &v)
	if v.FirecrackerVersion != FirecrackerAPIVersion {
		t.Errorf("version %q", v.FirecrackerVersion)
	}
	var mc types.MachineConfiguration
	json.Unmarshal(e.get("/machine-config", "MachineConfiguration"), &mc)
	if mc.VCPUCount != 1 || mc.MemSizeMib != 128 || mc.HugePages != "None" {
		t.Errorf("default machine config %+v, want Firecracker's 1 vCPU, 128 MiB", mc)
	}

	e.do("PUT", "/boot-source", `{"kernel_image_path": "`+e.kernel+`", "boot_args": "console=ttyS0"}`, 204)
	e.do("PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true}`, 204)
	e.do("PATCH", "/machine-config", `{"mem_size_mib": 64}`, 204)
	json.Unmarshal(e.get("/machine-config", "MachineConfiguration"), &mc)
	if mc.VCPUCount != 2 || mc.MemSizeMib != 64 || !mc.TrackDirtyPages {
		t.Errorf("after PUT and PATCH: %+v", mc)
	}
	var full types.FullVMConfiguration
	json.Unmarshal(e.get("/vm/config", "FullVmConfiguration"), &full)
	if full.BootSource == nil || full.BootSource.KernelImagePath != e.kernel || full.BootSource.BootArgs != "console=ttyS0" {
		t.Errorf("vm/config boot source %+v", full.BootSource)
	}
	metrics := filepath.Join(t.TempDir(), "metrics.json")
	e.do("PUT", "/metrics", `{"metrics_path": "`+metrics+`"}`, 204)
	e.do("PUT", "/actions", `{"action_type": "FlushMetrics"}`, 204)

	e.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	if s := e.state(); s != "Running" {
		t.Fatalf("state %q after InstanceStart", s)
	}
	m := e.machine()
	if m.cfg.CPUs != 2 || m.cfg.MemorySize != 64<<20 || m.cfg.KernelPath != e.kernel || m.cfg.Cmdline != "console=ttyS0" || m.cfg.CPUTemplate != "host" {
		t.Errorf("VM built with %+v", m.cfg)
	}
	e.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
	if s := e.state(); s != "Paused" || !m.paused {
		t.Fatalf("state %q, machine paused %v after Paused", s, m.paused)
	}
	e.do("PATCH", "/vm", `{"state": "Resumed"}`, 204)
	if s := e.state(); s != "Running" || m.paused {
		t.Fatalf("state %q, machine paused %v after Resumed", s, m.paused)
	}
	e.do("PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`, 204)
	if m.ctrlAltDel != 1 {
		t.Errorf("%d Ctrl+Alt+Del presses reached the machine", m.ctrlAltDel)
	}
	e.do("PUT", "/actions", `{"action_type": "FlushMetrics"}`, 204)

	lines := readLines(t, metrics)
	if len(lines) != 2 {
		t.Fatalf("%d metrics lines, want 2", len(lines))
	}
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &last); err != nil {
		t.Fatalf("metrics line is not JSON: %v", err)
	}
	if last["state"] != "Running" || last["vmm"] == nil {
		t.Errorf("metrics line %s", lines[1])
	}
	// The flush being served is counted after it writes.
	put, _ := last["put_api_requests"].(map[string]any)
	if put["actions_count"] != float64(3) || put["boot_source_count"] != float64(1) {
		t.Errorf("put_api_requests %v", put)
	}

	m.end(vmm.Result{Reason: vmm.StopPowerOff})
	select {
	case <-e.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the machine stopped")
	}
	if r, ok := e.c.Result(); !ok || r.Reason != vmm.StopPowerOff {
		t.Errorf("Result %+v %v", r, ok)
	}
	if msg := e.fault("PATCH", "/vm", `{"state": "Paused"}`); !strings.Contains(msg, "has stopped") {
		t.Errorf("pause after stop: %q", msg)
	}
	e.get("/", "InstanceInfo")
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// Every 400 the API can give, in the state where it arises.
func TestErrorResponses(t *testing.T) {
	type step struct{ method, path, body string }
	tests := []struct {
		name    string
		started bool // InstanceStart before the request
		paused  bool
		setup   []step
		req     step
		want    string
	}{
		{"unknown path", false, false, nil, step{"GET", "/nope", ""}, "invalid request method and/or path: GET /nope"},
		{"wrong method", false, false, nil, step{"DELETE", "/vm", ""}, "invalid request method and/or path: DELETE /vm"},
		{"GET on a PUT-only path", false, false, nil, step{"GET", "/boot-source", ""}, "invalid request method and/or path"},
		{"balloon", false, false, nil, step{"PUT", "/balloon", `{}`}, "balloon device is not supported"},
		{"mmds", false, false, nil, step{"PUT", "/mmds", `{}`}, "MMDS is not supported"},
		{"drive PATCH", false, false, nil, step{"PATCH", "/drives/rootfs", `{}`}, "only PUT is supported"},
		{"drive without id", false, false, nil, step{"PUT", "/drives/", `{}`}, "only PUT is supported"},
		{"drive nested path", false, false, nil, step{"PUT", "/drives/a/b", `{}`}, "only PUT is supported"},
		{"empty PUT", false, false, nil, step{"PUT", "/boot-source", ""}, "empty body"},
		{"missing kernel file", false, false, nil, step{"PUT", "/boot-source", `{"kernel_image_path": "/nonexistent/vmlinux"}`}, "kernel_image_path: stat /nonexistent/vmlinux: no such file"},
		{"kernel is a directory", false, false, nil, step{"PUT", "/boot-source", `{"kernel_image_path": "/"}`}, "kernel_image_path / is a directory: not a regular file"},
		{"missing initrd", false, false, nil, step{"PUT", "/boot-source", `{"kernel_image_path": "KERNEL", "initrd_path": "/nonexistent/initrd"}`}, "initrd_path: stat"},
		{"start without boot source", false, false, nil, step{"PUT", "/actions", `{"action_type": "InstanceStart"}`}, "no boot source: PUT /boot-source first"},
		{"flush without metrics", false, false, nil, step{"PUT", "/actions", `{"action_type": "FlushMetrics"}`}, "metrics are not configured: PUT /metrics first"},
		{"ctrl-alt-del before start", false, false, nil, step{"PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`}, "SendCtrlAltDel is not supported before starting the microVM"},
		{"pause before start", false, false, nil, step{"PATCH", "/vm", `{"state": "Paused"}`}, "PATCH /vm Paused is not supported before starting"},
		{"resume before start", false, false, nil, step{"PATCH", "/vm", `{"state": "Resumed"}`}, "PATCH /vm Resumed is not supported before starting"},
		{"empty PATCH", false, false, nil, step{"PATCH", "/machine-config", `{}`}, "empty PATCH"},
		{"PATCH to invalid", false, false, nil, step{"PATCH", "/machine-config", `{"huge_pages": "2M", "mem_size_mib": 3}`}, "mem_size_mib must be a multiple of 2"},
		{"drive file missing", false, false, nil, step{"PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/nonexistent/r", "is_root_device": true}`}, "path_on_host: stat /nonexistent/r: no such file"},
		{"drive on a character device", false, false, nil, step{"PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/dev/null", "is_root_device": true}`}, "path_on_host /dev/null is neither a regular file nor a block device"},
		{"vhost-user drive", false, false, nil, step{"PUT", "/drives/d", `{"drive_id": "d", "socket": "/s", "is_root_device": false}`}, "vhost-user drives are not supported"},
		{"second root drive", false, false, []step{{"PUT", "/drives/a", `{"drive_id": "a", "path_on_host": "KERNEL", "is_root_device": true}`}},
			step{"PUT", "/drives/b", `{"drive_id": "b", "path_on_host": "KERNEL", "is_root_device": true}`}, `drive "a" is already the root device`},
		{"vsock path with a trailing slash", false, false, nil, step{"PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/tmp/v/"}`}, "uds_path"},
		{"bad MAC", false, false, nil, step{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "ff:ff:ff:ff:ff:ff"}`}, "guest_mac"},
		{"entropy bucket without refill", false, false, nil, step{"PUT", "/entropy", `{"rate_limiter": {"ops": {"size": 10, "refill_time": 0, "one_time_burst": -1}}}`}, "one_time_burst must not be negative"},
		{"metrics twice", false, false, []step{{"PUT", "/metrics", `{"metrics_path": "METRICS"}`}}, step{"PUT", "/metrics", `{"metrics_path": "METRICS"}`}, "metrics are already configured"},
		{"metrics to a directory", false, false, nil, step{"PUT", "/metrics", `{"metrics_path": "/"}`}, "neither a regular file nor a FIFO"},
		{"logger to a missing directory", false, false, nil, step{"PUT", "/logger", `{"log_path": "/nonexistent/dir/log"}`}, "log_path: open /nonexistent/dir/log"},
		{"snapshot create before start", false, false, nil, step{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`}, "PUT /snapshot/create is not supported before starting"},
		{"snapshot load unavailable", false, false, nil, step{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`}, "snapshot support is not available in this build yet"},
		{"snapshot load after configuring", false, false, []step{{"PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 64}`}}, step{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`}, "only accepted before anything but the logger and metrics is configured"},
		{"boot source after start", true, false, nil, step{"PUT", "/boot-source", `{"kernel_image_path": "KERNEL"}`}, "PUT /boot-source is not supported after starting the microVM"},
		{"machine config after start", true, false, nil, step{"PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 64}`}, "PUT /machine-config is not supported after starting"},
		{"machine config PATCH after start", true, false, nil, step{"PATCH", "/machine-config", `{"vcpu_count": 1}`}, "PATCH /machine-config is not supported after starting"},
		{"logger after start", true, false, nil, step{"PUT", "/logger", `{}`}, "PUT /logger is not supported after starting"},
		{"metrics after start", true, false, nil, step{"PUT", "/metrics", `{"metrics_path": "METRICS"}`}, "PUT /metrics is not supported after starting"},
		{"drive after start", true, false, nil, step{"PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "KERNEL", "is_root_device": true}`}, "PUT /drives is not supported after starting"},
		{"second start", true, false, nil, step{"PUT", "/actions", `{"action_type": "InstanceStart"}`}, "InstanceStart is not supported after starting"},
		{"snapshot load after start", true, false, nil, step{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`}, "PUT /snapshot/load is not supported after starting"},
		{"snapshot create while running", true, false, nil, step{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`}, `needs a paused microVM: PATCH /vm {"state": "Paused"} first`},
		{"diff snapshot without dirty tracking", true, true, nil, step{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}`}, "needs dirty page tracking"},
		{"snapshot create unavailable", true, true, nil, step{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`}, "snapshot support is not available in this build yet"},
		{"malformed action", false, false, nil, step{"PUT", "/actions", `{"action_type": }`}, "malformed JSON"},
		{"unknown action field", false, false, nil, step{"PUT", "/actions", `{"action": "InstanceStart"}`}, `unknown field "action"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newFakeEnv(t)
			metrics := filepath.Join(t.TempDir(), "metrics")
			fill := func(s string) string {
				return strings.NewReplacer("KERNEL", e.kernel, "METRICS", metrics).Replace(s)
			}
			if tt.started {
				e.do("PUT", "/boot-source", fill(`{"kernel_image_path": "KERNEL"}`), 204)
				e.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
			}
			if tt.paused {
				e.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
			}
			for _, s := range tt.setup {
				e.do(s.method, s.path, fill(s.body), 204)
			}
			msg := e.fault(tt.req.method, tt.req.path, fill(tt.req.body))
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("fault_message %q, want it to contain %q", msg, tt.want)
			}
		})
	}
}

func TestStartFailureLeavesTheInstanceConfigurable(t *testing.T) {
	e := newFakeEnv(t)
	e.do("PUT", "/boot-source", `{"kernel_image_path": "`+e.kernel+`"}`, 204)
	e.fail = errors.New("load kernel: not an ELF")
	if msg := e.fault("PUT", "/actions", `{"action_type": "InstanceStart"}`); !strings.Contains(msg, "build the microVM: load kernel: not an ELF") {
		t.Fatalf("fault %q", msg)
	}
	if s := e.state(); s != "Not started" {
		t.Fatalf("state %q after a failed start", s)
	}
	e.fail = nil
	e.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
}

func TestMetricsToFIFODoesNotBlock(t *testing.T) {
	e := newFakeEnv(t)
	fifo := filepath.Join(t.TempDir(), "metrics.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// No reader: the open must not wait for one.
	e.do("PUT", "/metrics", `{"metrics_path": "`+fifo+`"}`, 204)
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e.do("PUT", "/actions", `{"action_type": "FlushMetrics"}`, 204)
	buf := make([]byte, 4096)
	n, err := r.Read(buf)
	if err != nil || !bytes.HasSuffix(buf[:n], []byte("}\n")) {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	// Fill the pipe with nobody reading: the flush must fail within the
	// timeout, not hang the API.
	start := time.Now()
	var msg string
	for range 100000 {
		resp := e.h.ServeAPI(context.Background(), &microhttp.Request{Method: "PUT", Path: "/actions", Body: []byte(`{"action_type": "FlushMetrics"}`)})
		if resp.Status == 400 {
			msg = string(resp.Body)
			break
		}
	}
	if !strings.Contains(msg, "nobody drained the FIFO") {
		t.Fatalf("full FIFO: %q", msg)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("filling the FIFO took %v", d)
	}
}

func TestLoggerWritesToPath(t *testing.T) {
	e := newFakeEnv(t)
	logPath := filepath.Join(t.TempDir(), "volt.log")
	e.do("PUT", "/logger", `{"log_path": "`+logPath+`", "level": "debug", "show_level": true}`, 204)
	e.get("/", "InstanceInfo")
	e.c.Logger().Debug("hello from the test")
	lines := readLines(t, logPath)
	joined := strings.Join(lines, "\n")
	if !strings.Contains(joined, "level=INFO") || !strings.Contains(joined, `msg="api request"`) || !strings.Contains(joined, "path=/") {
		t.Errorf("log:\n%s", joined)
	}
	if !strings.Contains(joined, "hello from the test") {
		t.Errorf("debug record missing:\n%s", joined)
	}

	e.do("PUT", "/logger", `{"log_path": "`+logPath+`", "level": "Error", "show_level": false, "module": "api"}`, 204)
	before := len(readLines(t, logPath))
	e.c.Logger().Info("filtered by level")
	e.c.Logger().Error("kept")
	slog.New(e.c.logSwap).With(ModuleKey, "vmm").Error("filtered by module")
	lines = readLines(t, logPath)[before:]
	if len(lines) != 1 || !strings.Contains(lines[0], "kept") || strings.Contains(lines[0], "level=") {
		t.Errorf("after reconfiguring: %q", lines)
	}
}

func TestCloseStopsARunningMachine(t *testing.T) {
	e := newFakeEnv(t)
	e.do("PUT", "/boot-source", `{"kernel_image_path": "`+e.kernel+`"}`, 204)
	e.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	m := e.machine()
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if !m.closed {
		t.Error("machine not closed")
	}
	if r, ok := e.c.Result(); !ok || r.Reason != vmm.StopCanceled {
		t.Errorf("result %+v %v", r, ok)
	}
}

func TestCloseForExitStopsButLeavesTheMachineToTheKernel(t *testing.T) {
	e := newFakeEnv(t)
	e.do("PUT", "/boot-source", `{"kernel_image_path": "`+e.kernel+`"}`, 204)
	e.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	m := e.machine()
	if err := e.c.CloseForExit(); err != nil {
		t.Fatal(err)
	}
	if m.closed {
		t.Error("machine released explicitly; process exit is meant to do it")
	}
	if r, ok := e.c.Result(); !ok || r.Reason != vmm.StopCanceled {
		t.Errorf("result %+v %v", r, ok)
	}
}

// TestALongStartDoesNotBlockOtherRequests: while InstanceStart builds the
// VM (a large initrd can take seconds), reads are answered and changes are
// refused at once, not queued behind it.
func TestALongStartDoesNotBlockOtherRequests(t *testing.T) {
	e := newFakeEnv(t)
	e.do("PUT", "/boot-source", `{"kernel_image_path": "`+e.kernel+`"}`, statusNoContent)
	gate := make(chan struct{})
	e.mu.Lock()
	e.gate = gate
	e.mu.Unlock()
	started := make(chan microhttp.Response, 1)
	go func() {
		started <- e.h.ServeAPI(context.Background(), &microhttp.Request{Method: "PUT", Path: "/actions", Body: []byte(`{"action_type": "InstanceStart"}`)})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for e.c.State() != Starting {
		if time.Now().After(deadline) {
			t.Fatal("InstanceStart never reached the build")
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var info types.InstanceInfo
		json.Unmarshal(e.get("/", "InstanceInfo"), &info)
		if info.State != "Not started" {
			t.Errorf("GET / during the start: state %q", info.State)
		}
		if msg := e.fault("PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 64}`); !strings.Contains(msg, "while the microVM is starting") {
			t.Errorf("PUT /machine-config during the start: %q", msg)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("requests waited for the start to finish")
	}
	close(gate)
	if r := <-started; r.Status != statusNoContent {
		t.Fatalf("InstanceStart: %d %s", r.Status, r.Body)
	}
	if s := e.c.State(); s != Running {
		t.Fatalf("state after the start: %s", s)
	}
}

func TestMemoryTheHostCannotBackIsRefusedAtTheRequest(t *testing.T) {
	e := newFakeEnv(t)
	msg := e.fault("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 1048576}`)
	if !strings.Contains(msg, "mem_size_mib: guest memory 1024G is more than this host's RAM and swap") || !strings.Contains(msg, "--memory-overcommit") {
		t.Errorf("1 TiB guest: %q", msg)
	}
	msg = e.fault("PATCH", "/machine-config", `{"mem_size_mib": 1048576}`)
	if !strings.Contains(msg, "more than this host's RAM and swap") {
		t.Errorf("1 TiB guest by PATCH: %q", msg)
	}
	e.do("PUT", "/machine-config", `{"vcpu_count": 32, "mem_size_mib": 64}`, statusNoContent)
}

// TestDevicesReachTheVMConfiguration configures every kind of device
// through the API and checks GET /vm/config and what the VM is built with.
func TestDevicesReachTheVMConfiguration(t *testing.T) {
	e := newFakeEnv(t)
	e.do("PUT", "/boot-source", `{"kernel_image_path": "`+e.kernel+`"}`, statusNoContent)
	e.do("PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "`+e.kernel+`", "is_root_device": true, "is_read_only": true, "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}`, statusNoContent)
	e.do("PUT", "/drives/data", `{"drive_id": "data", "path_on_host": "`+e.kernel+`", "is_root_device": false}`, statusNoContent)
	// The same ID again replaces the drive.
	e.do("PUT", "/drives/data", `{"drive_id": "data", "path_on_host": "`+e.kernel+`", "is_root_device": false, "is_read_only": true}`, statusNoContent)
	e.do("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "mtu": 1400}`, statusNoContent)
	e.do("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/tmp/volt-test.vsock"}`, statusNoContent)
	e.do("PUT", "/entropy", `{}`, statusNoContent)
	var full types.FullVMConfiguration
	if err := json.Unmarshal(e.get("/vm/config", "FullVmConfiguration"), &full); err != nil {
		t.Fatal(err)
	}
	if len(full.Drives) != 2 || full.Drives[1].IsReadOnly == nil || !*full.Drives[1].IsReadOnly || len(full.NetworkInterfaces) != 1 || full.Vsock == nil || full.Entropy == nil {
		t.Fatalf("GET /vm/config: %+v", full)
	}
	e.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, statusNoContent)
	cfg := e.machine().cfg
	if len(cfg.Drives) != 2 || !cfg.Drives[0].Root || !cfg.Drives[0].ReadOnly || cfg.Drives[0].RateLimit.Ops.Size != 100 || cfg.Drives[0].RateLimit.Ops.RefillTime != time.Second {
		t.Errorf("drives built: %+v", cfg.Drives)
	}
	if len(cfg.Nets) != 1 || cfg.Nets[0].Backend.Name != "tap0" || cfg.Nets[0].Config.MTU != 1400 || cfg.Nets[0].Config.MAC.String() != "06:00:ac:10:00:02" {
		t.Errorf("network built: %+v", cfg.Nets)
	}
	if cfg.Vsock == nil || cfg.Vsock.GuestCID != 3 || cfg.Entropy == nil {
		t.Errorf("vsock %+v, entropy %+v", cfg.Vsock, cfg.Entropy)
	}
}
