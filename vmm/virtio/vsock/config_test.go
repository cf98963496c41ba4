package vsock

import (
	"strings"
	"testing"
	"time"
)

func TestConfigRequestTimeout(t *testing.T) {
	for _, tc := range []struct {
		d       time.Duration
		wantErr string
	}{
		{0, ""}, // the process default
		{time.Millisecond, ""},
		{2 * time.Second, ""},
		{MaxRequestTimeout, ""},
		{-time.Second, "more than 0"},
		{MaxRequestTimeout + time.Nanosecond, "at most 1h0m0s"},
	} {
		err := Config{GuestCID: 3, UDSPath: "/tmp/v.sock", RequestTimeout: tc.d}.Validate()
		if tc.wantErr == "" && err != nil {
			t.Errorf("%v: %v", tc.d, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%v: got %v, want an error with %q", tc.d, err, tc.wantErr)
		}
	}
}

func TestSetDefaultRequestTimeout(t *testing.T) {
	t.Cleanup(func() { defaultRequestTimeout.Store(0) })
	if got := DefaultRequestTimeout(); got != RequestTimeout {
		t.Fatalf("default %v, want Firecracker's %v", got, RequestTimeout)
	}
	for _, bad := range []time.Duration{0, -1, MaxRequestTimeout + 1} {
		if err := SetDefaultRequestTimeout(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if got := DefaultRequestTimeout(); got != RequestTimeout {
		t.Fatalf("a refused value changed the default to %v", got)
	}
	if err := SetDefaultRequestTimeout(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := defaultParams().requestTimeout; got != 90*time.Second {
		t.Fatalf("new connections' request timeout %v, want 90s", got)
	}
}
