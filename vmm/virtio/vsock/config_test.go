package vsock

import (
	"path/filepath"
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

// A device's request timeout is Firecracker's unless its Config or, for a
// device whose Config cannot carry it (a restored one), WithRequestTimeout
// sets it; the option wins, and zero leaves it alone.
func TestWithRequestTimeout(t *testing.T) {
	if got := defaultParams().requestTimeout; got != RequestTimeout {
		t.Fatalf("default %v, want Firecracker's %v", got, RequestTimeout)
	}
	for _, tc := range []struct {
		name   string
		config time.Duration
		opt    time.Duration
		want   time.Duration
	}{
		{"neither", 0, 0, RequestTimeout},
		{"config", 30 * time.Second, 0, 30 * time.Second},
		{"option", 0, 90 * time.Second, 90 * time.Second},
		{"option over config", 30 * time.Second, 90 * time.Second, 90 * time.Second},
	} {
		d, err := New(Config{GuestCID: testCID, UDSPath: filepath.Join(shortTempDir(t), "v.sock"), RequestTimeout: tc.config}, WithRequestTimeout(tc.opt))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.params.requestTimeout; got != tc.want {
			t.Errorf("%s: request timeout %v, want %v", tc.name, got, tc.want)
		}
		d.Close()
	}
}
