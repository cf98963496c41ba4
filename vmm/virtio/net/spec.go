package net

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
)

// Spec is one interface as given on the command line.
type Spec struct {
	Config  Config
	Backend BackendConfig
}

// DefaultID is the interface id when a spec names none.
const DefaultID = "eth0"

// ParseSpec reads a --net value: comma-separated key=value pairs, exactly
// one backend among
//
//	tap=NAME        open (or create) the TAP NAME
//	macvtap=NAME    open the macvtap interface NAME
//	bridge=BRIDGE   create a TAP and attach it to the existing BRIDGE
//
// and optionally id=ID (default eth0), mac=02:..., mtu=N, and rate limits
// rx-ops=N/DURATION, rx-bytes=N/DURATION, tx-ops=..., tx-bytes=... (a
// bucket of N refilled over DURATION, e.g. tx-bytes=12500000/100ms).
//
//	tap=vtap0,mac=02:00:00:00:00:01
//	bridge=volt0,id=eth1,tx-ops=1000/1s
func ParseSpec(s string) (Spec, error) {
	var sp Spec
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return Spec{}, fmt.Errorf("--net %q: %q is not key=value", s, kv)
		}
		if seen[k] {
			return Spec{}, fmt.Errorf("--net %q: %s given twice", s, k)
		}
		seen[k] = true
		var err error
		switch k {
		case "tap", "macvtap", "bridge":
			if sp.Backend.Kind != "" {
				return Spec{}, fmt.Errorf("--net %q: one backend only (tap, macvtap or bridge)", s)
			}
			sp.Backend.Kind = BackendKind(k)
			if k == "bridge" {
				sp.Backend.Bridge = v
			} else {
				sp.Backend.Name = v
			}
		case "id":
			sp.Config.ID = v
		case "mac":
			sp.Config.MAC, err = ParseMAC(v)
		case "mtu":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 16)
			sp.Config.MTU = uint16(n)
		case "rx-ops":
			sp.Config.RxRateLimit.Ops, err = parseBucket(v)
		case "rx-bytes":
			sp.Config.RxRateLimit.Bytes, err = parseBucket(v)
		case "tx-ops":
			sp.Config.TxRateLimit.Ops, err = parseBucket(v)
		case "tx-bytes":
			sp.Config.TxRateLimit.Bytes, err = parseBucket(v)
		default:
			return Spec{}, fmt.Errorf("--net %q: unknown key %q (want tap, macvtap, bridge, id, mac, mtu, rx-ops, rx-bytes, tx-ops, tx-bytes)", s, k)
		}
		if err != nil {
			return Spec{}, fmt.Errorf("--net %q: %s: %w", s, k, err)
		}
	}
	if sp.Config.ID == "" {
		sp.Config.ID = DefaultID
	}
	if err := sp.Backend.Validate(); err != nil {
		return Spec{}, fmt.Errorf("--net %q: %w", s, err)
	}
	if err := sp.Config.Validate(); err != nil {
		return Spec{}, fmt.Errorf("--net %q: %w", s, err)
	}
	return sp, nil
}

// parseBucket reads N/DURATION.
func parseBucket(v string) (ratelimit.BucketConfig, error) {
	n, d, ok := strings.Cut(v, "/")
	if !ok {
		return ratelimit.BucketConfig{}, fmt.Errorf("%q is not SIZE/DURATION", v)
	}
	size, err := strconv.ParseUint(n, 10, 64)
	if err != nil || size == 0 {
		return ratelimit.BucketConfig{}, fmt.Errorf("bucket size %q is not a positive integer", n)
	}
	refill, err := time.ParseDuration(d)
	if err != nil || refill <= 0 {
		return ratelimit.BucketConfig{}, fmt.Errorf("refill time %q is not a positive duration", d)
	}
	b := ratelimit.BucketConfig{Size: size, RefillTime: refill}
	return b, b.Validate()
}

// FirecrackerBucket converts a Firecracker API TokenBucket (refill_time in
// milliseconds) into a bucket configuration; a zero size or refill time is
// an unlimited bucket, as in Firecracker.
func FirecrackerBucket(size, oneTimeBurst, refillTimeMs int64) (ratelimit.BucketConfig, error) {
	if size < 0 || oneTimeBurst < 0 || refillTimeMs < 0 {
		return ratelimit.BucketConfig{}, fmt.Errorf("token bucket with a negative field (size %d, one_time_burst %d, refill_time %d)", size, oneTimeBurst, refillTimeMs)
	}
	if size == 0 || refillTimeMs == 0 {
		return ratelimit.BucketConfig{}, nil
	}
	if refillTimeMs > int64(time.Duration(1<<62)/time.Millisecond) {
		return ratelimit.BucketConfig{}, fmt.Errorf("refill_time %d ms is too long", refillTimeMs)
	}
	b := ratelimit.BucketConfig{Size: uint64(size), OneTimeBurst: uint64(oneTimeBurst), RefillTime: time.Duration(refillTimeMs) * time.Millisecond}
	return b, b.Validate()
}
