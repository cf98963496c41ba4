package api

import (
	"strings"
	"testing"
)

func TestParseConfigFile(t *testing.T) {
	tests := []struct {
		name, body, wantErr string
	}{
		{"minimal", `{"boot-source": {"kernel_image_path": "/k"}}`, ""},
		{"full", `{"boot-source": {"kernel_image_path": "/k", "boot_args": "x"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}, "drives": [], "network-interfaces": [], "logger": {"level": "Info"}, "metrics": {"metrics_path": "/m"}}`, ""},
		{"unset sections as GET /vm/config prints them", `{"boot-source": {"kernel_image_path": "/k"}, "balloon": null, "mmds-config": null, "cpu-config": null, "vsock": null, "entropy": null}`, ""},
		{"no boot source", `{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}`, `missing required field "boot-source"`},
		{"null boot source", `{"boot-source": null}`, `"boot-source" is required`},
		{"balloon", `{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1, "deflate_on_oom": true}}`, `section "balloon" is not supported`},
		{"unknown section", `{"boot-source": {"kernel_image_path": "/k"}, "boot_source": {}}`, `unknown field "boot_source"`},
		{"nested unknown", `{"boot-source": {"kernel_image_path": "/k", "initrd": "/i"}}`, `unknown field "boot-source.initrd"`},
		{"not an object", `[1]`, `want a JSON object (ConfigFile)`},
		{"malformed", `{"boot-source": `, `malformed JSON`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfigFile([]byte(tt.body))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
