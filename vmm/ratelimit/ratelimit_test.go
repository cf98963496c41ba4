package ratelimit

import (
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newLimiter(t *testing.T, cfg Config) (*Limiter, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1000, 0)}
	l, err := New(cfg, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	return l, c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  BucketConfig
		ok   bool
	}{
		{"unlimited", BucketConfig{}, true},
		{"limited", BucketConfig{Size: 10, RefillTime: time.Second}, true},
		{"burst", BucketConfig{Size: 10, OneTimeBurst: 5, RefillTime: time.Second}, true},
		{"size without refill", BucketConfig{Size: 10}, false},
		{"refill without size", BucketConfig{RefillTime: time.Second}, false},
		{"negative refill", BucketConfig{Size: 10, RefillTime: -time.Second}, false},
		{"burst on unlimited", BucketConfig{OneTimeBurst: 5}, false},
		{"huge size", BucketConfig{Size: 1 << 63, RefillTime: time.Second}, false},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestUnlimitedPassesEverything(t *testing.T) {
	l, _ := newLimiter(t, Config{})
	for i := 0; i < 1000; i++ {
		if ok, _ := l.Consume(1, 1<<30); !ok {
			t.Fatal("unlimited limiter refused a request")
		}
	}
	var nilLimiter *Limiter
	if ok, _ := nilLimiter.Consume(1, 1); !ok {
		t.Fatal("nil limiter refused a request")
	}
}

// A sequence of requests against one limiter, with the clock moved between
// them: each step says whether it passes and, if not, how long to wait.
func TestLimiterSequences(t *testing.T) {
	type step struct {
		advance  time.Duration
		ops, n   uint64
		ok       bool
		wait     time.Duration // checked when !ok
		wantOps  int64         // budget after the step, -1: not checked
		wantByte int64
	}
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{
			name: "ops bucket drains and refills linearly",
			cfg:  Config{Ops: BucketConfig{Size: 10, RefillTime: time.Second}},
			steps: []step{
				{ops: 10, ok: true, wantOps: 0, wantByte: -1},
				{ops: 1, ok: false, wait: 100 * time.Millisecond, wantOps: 0, wantByte: -1},
				{advance: 50 * time.Millisecond, ops: 1, ok: false, wait: 100 * time.Millisecond, wantOps: 0, wantByte: -1},
				// 50 ms + 50 ms earn one token exactly: the sub-token
				// remainder of the first refill is not lost.
				{advance: 50 * time.Millisecond, ops: 1, ok: true, wantOps: 0, wantByte: -1},
				{advance: 10 * time.Second, ops: 0, ok: true, wantOps: 10, wantByte: -1},
			},
		},
		{
			name: "one-time burst is spent first and never refilled",
			cfg:  Config{Bytes: BucketConfig{Size: 100, OneTimeBurst: 50, RefillTime: time.Second}},
			steps: []step{
				{n: 120, ok: true, wantOps: -1, wantByte: 30},
				{advance: time.Second, n: 100, ok: true, wantOps: -1, wantByte: 0},
				{n: 1, ok: false, wait: 10 * time.Millisecond, wantOps: -1, wantByte: 0},
				{advance: time.Second, n: 101, ok: true, wantOps: -1, wantByte: -1}, // oversized from a full bucket
			},
		},
		{
			name: "oversized request goes into debt and waits it off",
			cfg:  Config{Bytes: BucketConfig{Size: 1000, RefillTime: time.Second}},
			steps: []step{
				{n: 1, ok: true, wantOps: -1, wantByte: 999},
				// Not full: an oversized request waits until it is.
				{n: 5000, ok: false, wait: time.Millisecond, wantOps: -1, wantByte: 999},
				{advance: time.Millisecond, n: 5000, ok: true, wantOps: -1, wantByte: -4000},
				// 4 s of debt plus the 100 tokens asked for.
				{n: 100, ok: false, wait: 4100 * time.Millisecond, wantOps: -1, wantByte: -4000},
				{advance: 4100 * time.Millisecond, n: 100, ok: true, wantOps: -1, wantByte: 0},
			},
		},
		{
			name: "both buckets or neither",
			cfg: Config{
				Ops:   BucketConfig{Size: 5, RefillTime: time.Second},
				Bytes: BucketConfig{Size: 4096, RefillTime: time.Second},
			},
			steps: []step{
				{ops: 1, n: 4096, ok: true, wantOps: 4, wantByte: 0},
				// Bytes short: the op taken first is given back.
				{ops: 1, n: 4096, ok: false, wait: time.Second, wantOps: 4, wantByte: 0},
				// 500 ms refill 2.5 ops (capped at 5) and 2048 bytes.
				{advance: 500 * time.Millisecond, ops: 1, n: 2048, ok: true, wantOps: 4, wantByte: 0},
			},
		},
		{
			name: "undo gives back the one-time burst too",
			cfg: Config{
				Ops:   BucketConfig{Size: 1, OneTimeBurst: 1, RefillTime: time.Second},
				Bytes: BucketConfig{Size: 10, RefillTime: time.Second},
			},
			steps: []step{
				{n: 10, ok: true, wantOps: 1, wantByte: 0},
				// The op comes from the burst; bytes are short; the burst
				// is given back.
				{ops: 1, n: 10, ok: false, wait: time.Second, wantOps: 1, wantByte: 0},
				// Burst (1) + budget (1) serve 2 ops without debt; without
				// the burst back this would be an oversized -1.
				{advance: time.Second, ops: 2, n: 10, ok: true, wantOps: 0, wantByte: 0},
			},
		},
		{
			name: "huge values do not overflow",
			cfg:  Config{Bytes: BucketConfig{Size: 1 << 62, RefillTime: 1000 * time.Hour}},
			steps: []step{
				{n: 1 << 62, ok: true, wantOps: -1, wantByte: 0},
				{advance: 2000 * time.Hour, n: 1 << 61, ok: true, wantOps: -1, wantByte: 1 << 61},
				{n: 1<<62 + 1, ok: false, wait: 500 * time.Hour, wantOps: -1, wantByte: 1 << 61},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, c := newLimiter(t, tt.cfg)
			for i, s := range tt.steps {
				c.advance(s.advance)
				ok, wait := l.Consume(s.ops, s.n)
				if ok != s.ok {
					t.Fatalf("step %d: Consume(%d, %d) ok = %v, want %v", i, s.ops, s.n, ok, s.ok)
				}
				if !ok && wait != s.wait {
					t.Fatalf("step %d: wait = %v, want %v", i, wait, s.wait)
				}
				if s.wantOps >= 0 && l.ops.Budget(c.now()) != s.wantOps {
					t.Fatalf("step %d: ops budget %d, want %d", i, l.ops.Budget(c.now()), s.wantOps)
				}
				if s.wantByte != -1 && l.bytes.Budget(c.now()) != s.wantByte {
					t.Fatalf("step %d: bytes budget %d, want %d", i, l.bytes.Budget(c.now()), s.wantByte)
				}
			}
		})
	}
}

// Over a long run with requests as fast as allowed, the throughput equals
// the configured rate (plus the bucket and burst once), whatever the
// request size: the limiter neither leaks nor loses tokens.
func TestLimiterLongRunRate(t *testing.T) {
	for _, req := range []uint64{512, 4096, 65536, 1 << 20, 3 << 20} {
		l, c := newLimiter(t, Config{Bytes: BucketConfig{Size: 1 << 20, OneTimeBurst: 1 << 19, RefillTime: 100 * time.Millisecond}})
		var sent uint64
		start := c.now()
		for c.now().Sub(start) < 2*time.Second {
			if ok, wait := l.Consume(0, req); ok {
				sent += req
			} else {
				c.advance(wait)
			}
		}
		elapsed := c.now().Sub(start)
		want := float64(1<<20)*elapsed.Seconds()/0.1 + float64(1<<20) + float64(1<<19)
		if got := float64(sent); got > want+float64(req) || got < want*0.99-float64(req) {
			t.Errorf("request size %d: sent %.0f bytes in %v, want about %.0f", req, got, elapsed, want)
		}
	}
}
