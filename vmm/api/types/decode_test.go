package types

import (
	"strings"
	"testing"

	"github.com/voltvmm/volt/vmm/cpu"
)

func TestDecodeMachineConfiguration(t *testing.T) {
	tests := []struct {
		name, body string
		wantErr    string // "" for success
	}{
		{"minimal", `{"vcpu_count": 2, "mem_size_mib": 256}`, ""},
		{"all fields", `{"vcpu_count": 32, "mem_size_mib": 1024, "smt": false, "cpu_template": "None", "track_dirty_pages": true, "huge_pages": "2M"}`, ""},
		{"volt template", `{"vcpu_count": 1, "mem_size_mib": 2, "cpu_template": "baseline"}`, ""},
		{"unknown field", `{"vcpus": 2, "mem_size_mib": 256}`, `unknown field "vcpus"`},
		{"field names are case-sensitive", `{"VCPU_COUNT": 2, "mem_size_mib": 256}`, `unknown field "VCPU_COUNT"`},
		{"duplicate field", `{"vcpu_count": 2, "vcpu_count": 4, "mem_size_mib": 256}`, `duplicate field "vcpu_count"`},
		{"missing vcpu_count", `{"mem_size_mib": 256}`, `missing required field "vcpu_count"`},
		{"missing mem_size_mib", `{"vcpu_count": 1}`, `missing required field "mem_size_mib"`},
		{"string for integer", `{"vcpu_count": "2", "mem_size_mib": 256}`, `vcpu_count: want an integer, got a string`},
		{"fraction", `{"vcpu_count": 1.5, "mem_size_mib": 256}`, `vcpu_count: want an integer, got 1.5`},
		{"exponent", `{"vcpu_count": 1, "mem_size_mib": 1e3}`, `mem_size_mib: want an integer, got 1e3`},
		{"overflow", `{"vcpu_count": 1, "mem_size_mib": 99999999999999999999}`, `mem_size_mib: 99999999999999999999 is out of range`},
		{"null", `{"vcpu_count": null, "mem_size_mib": 256}`, `vcpu_count must not be null`},
		{"bool for bool", `{"vcpu_count": 1, "mem_size_mib": 256, "smt": "no"}`, `smt: want true or false, got a string`},
		{"zero vcpus", `{"vcpu_count": 0, "mem_size_mib": 256}`, `vcpu_count must be between 1 and 32, got 0`},
		{"33 vcpus", `{"vcpu_count": 33, "mem_size_mib": 256}`, `vcpu_count must be between 1 and 32, got 33`},
		{"negative vcpus", `{"vcpu_count": -1, "mem_size_mib": 256}`, `vcpu_count must be between 1 and 32, got -1`},
		{"too little memory", `{"vcpu_count": 1, "mem_size_mib": 1}`, `mem_size_mib must be at least 2`},
		{"too much memory", `{"vcpu_count": 1, "mem_size_mib": 9223372036854775807}`, `mem_size_mib must be at most 1048576`},
		{"smt", `{"vcpu_count": 2, "mem_size_mib": 256, "smt": true}`, `smt cannot be enabled`},
		{"firecracker template", `{"vcpu_count": 1, "mem_size_mib": 256, "cpu_template": "T2"}`, `cpu_template "T2" is a Firecracker instance-type template`},
		{"unknown template", `{"vcpu_count": 1, "mem_size_mib": 256, "cpu_template": "fast"}`, `cpu_template "fast" is not a known template`},
		{"empty template, as Firecracker refuses", `{"vcpu_count": 1, "mem_size_mib": 256, "cpu_template": ""}`, `cpu_template must not be an empty string`},
		{"empty huge pages", `{"vcpu_count": 1, "mem_size_mib": 256, "huge_pages": ""}`, `huge_pages must not be an empty string`},
		{"transparent huge pages", `{"vcpu_count": 1, "mem_size_mib": 256, "huge_pages": "Transparent"}`, `huge_pages "Transparent" is not supported`},
		{"bad huge pages", `{"vcpu_count": 1, "mem_size_mib": 256, "huge_pages": "1G"}`, `huge_pages must be "None" or "2M"`},
		{"odd memory with 2M pages", `{"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}`, `mem_size_mib must be a multiple of 2 with 2M huge pages`},
		{"empty", ``, `empty body: a JSON MachineConfiguration object is required`},
		{"blank", " \n", `empty body`},
		{"array", `[]`, `the body: want a JSON object (MachineConfiguration), got an array`},
		{"two values", `{"vcpu_count": 1, "mem_size_mib": 256} {}`, `more than one JSON value`},
		{"trailing garbage", `{"vcpu_count": 1, "mem_size_mib": 256} x`, `more than one JSON value`},
		{"truncated", `{"vcpu_count": 1,`, `malformed JSON`},
		{"bad syntax", `{"vcpu_count": 1 "mem_size_mib": 2}`, `malformed JSON at byte`},
		{"not JSON", `vcpu_count=1`, `malformed JSON`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode[MachineConfiguration]([]byte(tt.body))
			if err == nil {
				err = m.Validate(cpu.TemplateNames())
			}
			checkErr(t, err, tt.wantErr)
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("accepted, want error %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q, want it to contain %q", err, want)
	}
}

func TestDecodeBodies(t *testing.T) {
	// validateAs decodes body as the type of the endpoint and validates it.
	type check func(body string) error
	of := func(f func([]byte) error) check { return func(b string) error { return f([]byte(b)) } }
	bootSource := of(func(b []byte) error {
		v, err := Decode[BootSource](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	action := of(func(b []byte) error {
		v, err := Decode[InstanceActionInfo](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	vm := of(func(b []byte) error {
		v, err := Decode[VM](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	logger := of(func(b []byte) error {
		v, err := Decode[Logger](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	metrics := of(func(b []byte) error {
		v, err := Decode[Metrics](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	drive := of(func(b []byte) error {
		v, err := Decode[Drive](b)
		if err != nil {
			return err
		}
		return v.Validate("rootfs")
	})
	nic := of(func(b []byte) error {
		v, err := Decode[NetworkInterface](b)
		if err != nil {
			return err
		}
		return v.Validate("eth0")
	})
	vsock := of(func(b []byte) error {
		v, err := Decode[Vsock](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	entropy := of(func(b []byte) error {
		v, err := Decode[EntropyDevice](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	snapCreate := of(func(b []byte) error {
		v, err := Decode[SnapshotCreateParams](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	snapLoad := of(func(b []byte) error {
		v, err := Decode[SnapshotLoadParams](b)
		if err != nil {
			return err
		}
		return v.Validate()
	})
	patch := of(func(b []byte) error {
		_, err := Decode[MachineConfigurationPatch](b)
		return err
	})

	tests := []struct {
		name    string
		check   check
		body    string
		wantErr string
	}{
		{"boot source", bootSource, `{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}`, ""},
		{"boot source without kernel", bootSource, `{"boot_args": "x"}`, `missing required field "kernel_image_path"`},
		{"boot source empty kernel", bootSource, `{"kernel_image_path": ""}`, `kernel_image_path must not be empty`},
		{"boot source NUL in path", bootSource, `{"kernel_image_path": "/k\u0000x"}`, `kernel_image_path contains a NUL byte`},
		{"boot source typo", bootSource, `{"kernel_image": "/k"}`, `unknown field "kernel_image"`},
		{"action start", action, `{"action_type": "InstanceStart"}`, ""},
		{"action unknown", action, `{"action_type": "Reboot"}`, `action_type must be InstanceStart, SendCtrlAltDel or FlushMetrics, got "Reboot"`},
		{"action missing", action, `{}`, `missing required field "action_type"`},
		{"action payload", action, `{"action_type": "InstanceStart", "payload": {}}`, `unknown field "payload"`},
		{"vm paused", vm, `{"state": "Paused"}`, ""},
		{"vm bad state", vm, `{"state": "Stopped"}`, `state must be "Paused" or "Resumed", got "Stopped"`},
		{"vm state not string", vm, `{"state": 1}`, `state: want a string, got the number 1`},
		{"logger", logger, `{"log_path": "/tmp/l", "level": "warning", "show_level": true, "show_log_origin": true, "module": "api"}`, ""},
		{"logger empty", logger, `{}`, ""},
		{"logger bad level", logger, `{"level": "loud"}`, `level must be one of Error, Warning, Info, Debug, Trace, Off (any case), got "loud"`},
		{"metrics", metrics, `{"metrics_path": "/tmp/m"}`, ""},
		{"metrics empty path", metrics, `{"metrics_path": ""}`, `metrics_path must not be empty`},
		{"drive", drive, `{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false, "cache_type": "Writeback", "io_engine": "Sync", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 100}}}`, ""},
		{"drive id mismatch", drive, `{"drive_id": "data", "path_on_host": "/r", "is_root_device": false}`, `drive_id "data" in the body does not match "rootfs" in the path`},
		{"drive without path", drive, `{"drive_id": "rootfs", "is_root_device": false}`, `path_on_host is required`},
		{"drive path and socket", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "socket": "/s"}`, `mutually exclusive`},
		{"drive bad cache", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "cache_type": "None"}`, `cache_type must be "Unsafe" or "Writeback"`},
		{"drive bad engine", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "io_engine": "Uring"}`, `io_engine must be "Sync" or "Async"`},
		{"drive negative bucket", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "rate_limiter": {"ops": {"size": -1, "refill_time": 1}}}`, `rate_limiter.ops.size must not be negative`},
		{"drive bucket missing size", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "rate_limiter": {"ops": {"refill_time": 1}}}`, `missing required field "rate_limiter.ops.size"`},
		{"drive nested unknown", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "rate_limiter": {"iops": {}}}`, `unknown field "rate_limiter.iops"`},
		{"drive partuuid without root", drive, `{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/r", "partuuid": "x"}`, `partuuid is only used with is_root_device true`},
		{"drive missing root flag", drive, `{"drive_id": "rootfs", "path_on_host": "/r"}`, `missing required field "is_root_device"`},
		{"nic", nic, `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "mtu": 1500}`, ""},
		{"nic bad mac", nic, `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00"}`, `guest_mac "06:00" is not a MAC address`},
		{"nic long dev", nic, `{"iface_id": "eth0", "host_dev_name": "a-very-long-tap-name"}`, `host_dev_name "a-very-long-tap-name" is not a host interface name`},
		{"nic mtu", nic, `{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}`, `mtu must be between 68 and 65535, got 67`},
		{"nic id chars", nic, `{"iface_id": "eth/0", "host_dev_name": "tap0"}`, `iface_id "eth/0" may only hold letters, digits`},
		{"vsock", vsock, `{"guest_cid": 3, "uds_path": "/tmp/v.sock"}`, ""},
		{"vsock reserved cid", vsock, `{"guest_cid": 2, "uds_path": "/tmp/v.sock"}`, `guest_cid must be between 3 and 4294967294, got 2`},
		{"vsock long path", vsock, `{"guest_cid": 3, "uds_path": "/` + strings.Repeat("x", 200) + `"}`, `longer than a Unix socket path can be`},
		{"entropy", entropy, `{}`, ""},
		{"entropy limiter", entropy, `{"rate_limiter": {"bandwidth": {"size": 10, "refill_time": -5}}}`, `rate_limiter.bandwidth.refill_time must not be negative`},
		{"entropy array limiter", entropy, `{"rate_limiter": []}`, `rate_limiter: want a JSON object (RateLimiter), got an array`},
		{"snapshot create", snapCreate, `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Full"}`, ""},
		{"snapshot create bad type", snapCreate, `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Delta"}`, `snapshot_type must be "Full" or "Diff"`},
		{"snapshot create same file", snapCreate, `{"snapshot_path": "/s", "mem_file_path": "/s"}`, `must be different files`},
		{"snapshot create into the CAS", snapCreate, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Cas", "backend_path": "/var/lib/volt/cas"}}`, ""},
		{"snapshot create with neither", snapCreate, `{"snapshot_path": "/s"}`, `mem_file_path must not be empty`},
		{"snapshot create into the CAS, 256 KiB chunks", snapCreate, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Cas", "backend_path": "/c", "chunk_size": 262144}}`, ""},
		{"snapshot create, chunk size not a power of two", snapCreate, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Cas", "backend_path": "/c", "chunk_size": 300000}}`, `chunk_size must be a power of two`},
		{"snapshot create, chunk size too small", snapCreate, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Cas", "backend_path": "/c", "chunk_size": 2048}}`, `chunk_size must be a power of two`},
		{"snapshot load with a chunk size", snapLoad, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Cas", "backend_path": "/c", "chunk_size": 65536}}`, `a load takes the manifest's`},
		{"snapshot create with both", snapCreate, `{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "Cas", "backend_path": "/c"}}`, `mutually exclusive`},
		{"snapshot create to a file backend", snapCreate, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, `must be "Cas" when creating`},
		{"snapshot load", snapLoad, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}`, ""},
		{"snapshot load no memory", snapLoad, `{"snapshot_path": "/s"}`, `one of mem_file_path and mem_backend is required`},
		{"snapshot load both memories", snapLoad, `{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, `mutually exclusive`},
		{"snapshot load bad backend", snapLoad, `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}`, `backend_type must be "File", "Uffd" or "Cas"`},
		{"snapshot load override index", snapLoad, `{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a", "host_dev_name": "b"}, {"iface_id": "c"}]}`, `missing required field "network_overrides[1].host_dev_name"`},
		{"patch one field", patch, `{"vcpu_count": 2}`, ""},
		{"patch unknown", patch, `{"cpus": 2}`, `unknown field "cpus"`},
		{"patch empty template", patch, `{"cpu_template": ""}`, `cpu_template must not be an empty string`},
		{"boot args at the limit", bootSource, `{"kernel_image_path": "/k", "boot_args": "` + strings.Repeat("a", MaxBootArgs) + `"}`, ""},
		{"boot args over the limit", bootSource, `{"kernel_image_path": "/k", "boot_args": "` + strings.Repeat("a", MaxBootArgs+1) + `"}`, `boot_args is 2048 bytes long, the kernel takes at most 2047`},
		{"boot args with NUL", bootSource, `{"kernel_image_path": "/k", "boot_args": "a\u0000b"}`, `boot_args contains a NUL byte at offset 1`},
		{"deep nesting", entropy, `{"rate_limiter": {"bandwidth": {"size": {"a": {"b": 1}}}}}`, `rate_limiter.bandwidth.size: want an integer, got an object`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.check(tt.body), tt.wantErr)
		})
	}
}
