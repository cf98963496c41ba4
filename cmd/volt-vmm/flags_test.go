package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// --vsock-connect-timeout becomes the VM's vmm.Config.VsockRequestTimeout,
// which its vsock device gets however it comes (--vsock, PUT /vsock, a
// snapshot); a value out of range is a usage error naming the flag.
func TestVsockConnectTimeoutFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    time.Duration
		wantErr string
	}{
		{nil, vsock.RequestTimeout, ""},
		{[]string{"--vsock-connect-timeout", "90s"}, 90 * time.Second, ""},
		{[]string{"--vsock-connect-timeout=250ms"}, 250 * time.Millisecond, ""},
		{[]string{"--vsock-connect-timeout", "1h"}, time.Hour, ""},
		{[]string{"--vsock-connect-timeout", "0s"}, 0, "more than 0"},
		{[]string{"--vsock-connect-timeout", "-2s"}, 0, "more than 0"},
		{[]string{"--vsock-connect-timeout", "61m"}, 0, "at most 1h0m0s"},
		{[]string{"--vsock-connect-timeout", "15"}, 0, `invalid argument "15"`},
		{[]string{"--vsock-connect-timeout", "soon"}, 0, `invalid argument "soon"`},
	} {
		f := newFlags()
		f.fs.SetOutput(io.Discard)
		var stderr bytes.Buffer
		err := f.fs.Parse(append([]string{"--api-sock", "/nonexistent/api.sock"}, tc.args...))
		var cfgTimeout time.Duration
		if err == nil {
			cfg, code := machineConfig(f, &stderr)
			if code != exitOK {
				err = errorString(stderr.String())
			}
			cfgTimeout = cfg.VsockRequestTimeout
		}
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "vsock-connect-timeout") {
				t.Errorf("%q: got %v, want an error naming the flag with %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if cfgTimeout != tc.want {
			t.Errorf("%q: the VM's vsock request timeout %v, want %v", tc.args, cfgTimeout, tc.want)
		}
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
