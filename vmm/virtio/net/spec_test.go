package net

import (
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
		err  string
	}{
		{"tap=vtap0", Spec{Config: Config{ID: "eth0"}, Backend: BackendConfig{Kind: BackendTap, Name: "vtap0"}}, ""},
		{"tap=vtap0,mac=02:00:00:00:00:01,mtu=9000,id=net1", Spec{
			Config:  Config{ID: "net1", MAC: MAC{2, 0, 0, 0, 0, 1}, MTU: 9000},
			Backend: BackendConfig{Kind: BackendTap, Name: "vtap0"}}, ""},
		{"macvtap=mvtap0", Spec{Config: Config{ID: "eth0"}, Backend: BackendConfig{Kind: BackendMacvtap, Name: "mvtap0"}}, ""},
		{"bridge=volt0,tx-ops=1000/1s,rx-bytes=12500000/100ms", Spec{
			Config: Config{ID: "eth0",
				TxRateLimit: ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 1000, RefillTime: time.Second}},
				RxRateLimit: ratelimit.Config{Bytes: ratelimit.BucketConfig{Size: 12500000, RefillTime: 100 * time.Millisecond}}},
			Backend: BackendConfig{Kind: BackendBridge, Bridge: "volt0"}}, ""},
		{"", Spec{}, "not key=value"},
		{"mac=02:00:00:00:00:01", Spec{}, "backend kind missing"},
		{"tap=a,bridge=b", Spec{}, "one backend only"},
		{"tap=a,tap=b", Spec{}, "given twice"},
		{"tap=a,mtu=70000", Spec{}, "mtu"},
		{"tap=a,mtu=10", Spec{}, "MTU"},
		{"tap=a,mac=01:00:00:00:00:01", Spec{}, "multicast"},
		{"tap=a,speed=10", Spec{}, "unknown key"},
		{"tap=a,tx-ops=5", Spec{}, "SIZE/DURATION"},
		{"tap=a,tx-ops=0/1s", Spec{}, "positive integer"},
		{"tap=a,tx-ops=5/-1s", Spec{}, "positive duration"},
		{"tap=a,id=", Spec{}, "not key=value"},
	} {
		got, err := ParseSpec(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSpec(%q) = %v, want error %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestFirecrackerBucket(t *testing.T) {
	for _, tc := range []struct {
		size, burst, refill int64
		want                ratelimit.BucketConfig
		ok                  bool
	}{
		{0, 0, 0, ratelimit.BucketConfig{}, true},
		{100, 0, 0, ratelimit.BucketConfig{}, true}, // no refill time: unlimited, as Firecracker
		{100, 50, 1000, ratelimit.BucketConfig{Size: 100, OneTimeBurst: 50, RefillTime: time.Second}, true},
		{-1, 0, 10, ratelimit.BucketConfig{}, false},
		{1, 0, 1 << 62, ratelimit.BucketConfig{}, false},
	} {
		got, err := FirecrackerBucket(tc.size, tc.burst, tc.refill)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("FirecrackerBucket(%d, %d, %d) = %+v, %v; want %+v ok=%v", tc.size, tc.burst, tc.refill, got, err, tc.want, tc.ok)
		}
	}
}

// FuzzParseSpec: no input panics, and whatever is accepted is valid.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"tap=vtap0", "bridge=volt0,tx-ops=1000/1s", "macvtap=m,mac=02:00:00:00:00:01,mtu=1500", "tap=a,rx-bytes=1/1ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpec(s)
		if err != nil {
			return
		}
		if err := sp.Config.Validate(); err != nil {
			t.Fatalf("accepted %q with an invalid config: %v", s, err)
		}
		if err := sp.Backend.Validate(); err != nil {
			t.Fatalf("accepted %q with an invalid backend: %v", s, err)
		}
	})
}
