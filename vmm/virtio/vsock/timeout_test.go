//go:build !race

// Like device_test.go, these run the device's worker beside the simulated
// guest's memory and stay out of -race builds.

package vsock

import (
	"io"
	"path/filepath"
	"testing"
	"time"
)

// TestConfiguredRequestTimeoutClosesUnansweredRequest: a host client's
// CONNECT to a guest that never answers (it never looks at its rx queue, as a
// guest kernel too busy to run its vsock driver) is closed by the request
// timeout the device was configured with, through its Config or through
// WithRequestTimeout (a restored device's way), not by another: the other
// is set far shorter, so a device that ignored the setting would close the
// client early and fail the test.
func TestConfiguredRequestTimeoutClosesUnansweredRequest(t *testing.T) {
	const want = 400 * time.Millisecond
	for _, tc := range []struct {
		name   string
		config time.Duration
		opts   []Option
	}{
		{"config", want, nil},
		{"option", 20 * time.Millisecond, []Option{WithRequestTimeout(want)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(shortTempDir(t), "v.sock")
			d, err := New(Config{GuestCID: testCID, UDSPath: path, RequestTimeout: tc.config}, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			_, a := newSimGuest(t, testCID) // the guest fills its rx queue once, then never steps
			if err := d.Activate(a); err != nil {
				t.Fatal(err)
			}
			startDevice(t, d)
			c := hostConnect(t, path, "52")
			t0 := time.Now()
			c.SetReadDeadline(time.Now().Add(want + 10*time.Second))
			b := make([]byte, 16)
			n, err := c.Read(b)
			took := time.Since(t0)
			if err != io.EOF {
				t.Fatalf("read %q, %v; want EOF (the request timing out)", b[:n], err)
			}
			if took < want {
				t.Fatalf("closed after %v, before the configured %v", took, want)
			}
			if k := d.Metrics().ConnsKilled.Load(); k != 1 {
				t.Fatalf("%d connections killed, want the 1 whose request timed out", k)
			}
			t.Logf("closed after %v (timeout %v)", took, want)
		})
	}
}
