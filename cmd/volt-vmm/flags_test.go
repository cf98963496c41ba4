package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

func TestVsockConnectTimeoutFlag(t *testing.T) {
	t.Cleanup(func() { vsock.SetDefaultRequestTimeout(vsock.RequestTimeout) })
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
		{[]string{"--vsock-connect-timeout", "15"}, 0, `"15" is not a duration`},
		{[]string{"--vsock-connect-timeout", "soon"}, 0, `"soon" is not a duration`},
	} {
		vsock.SetDefaultRequestTimeout(vsock.RequestTimeout)
		f := newFlags()
		f.fs.SetOutput(io.Discard)
		err := f.fs.Parse(tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "vsock-connect-timeout") {
				t.Errorf("%q: got %v, want an error naming the flag with %q", tc.args, err, tc.wantErr)
			}
			if got := vsock.DefaultRequestTimeout(); got != vsock.RequestTimeout {
				t.Errorf("%q: a refused value made the devices' timeout %v", tc.args, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if f.vsockConnectTimeout.d != tc.want {
			t.Errorf("%q: flag %v, want %v", tc.args, f.vsockConnectTimeout.d, tc.want)
		}
		// What the devices made after parsing get (boot, PUT /vsock and
		// restore all leave Config.RequestTimeout zero).
		if got := vsock.DefaultRequestTimeout(); got != tc.want {
			t.Errorf("%q: devices' request timeout %v, want %v", tc.args, got, tc.want)
		}
	}
}
