// Package ratelimit is Firecracker's I/O rate limiter: two token buckets,
// one counting operations and one counting bytes, each with a size, a time
// to refill completely and an optional one-time burst that is spent first
// and never refilled. A device asks for (ops, bytes) before serving a
// request; when either bucket is short, neither is charged and the device
// is told how long to wait.
//
// Unlike Firecracker's, a bucket here can go into debt: a request larger
// than the whole bucket is let through once the bucket is full and leaves a
// negative balance that refills at the normal rate. A worker therefore
// never waits forever, and a large request costs as much time as it should.
package ratelimit

import (
	"fmt"
	"math"
	"math/bits"
	"time"
)

// BucketConfig describes one token bucket. The zero value is an unlimited
// bucket. It is not a wire type: Firecracker's rate_limiter body gives
// refill_time in milliseconds, which the API layer converts.
type BucketConfig struct {
	// Size is the bucket's capacity in tokens (operations or bytes).
	Size uint64
	// OneTimeBurst is extra credit available once, on top of Size.
	OneTimeBurst uint64
	// RefillTime is how long an empty bucket takes to fill to Size.
	RefillTime time.Duration
}

// Enabled reports whether the bucket limits anything.
func (c BucketConfig) Enabled() bool { return c.Size != 0 && c.RefillTime != 0 }

// Validate checks the configuration: a bucket is either fully zero
// (unlimited) or has both a size and a refill time.
func (c BucketConfig) Validate() error {
	switch {
	case c.Size == 0 && c.RefillTime == 0:
		if c.OneTimeBurst != 0 {
			return fmt.Errorf("rate limiter: one-time burst %d on an unlimited bucket", c.OneTimeBurst)
		}
		return nil
	case c.Size == 0:
		return fmt.Errorf("rate limiter: refill time %v without a bucket size", c.RefillTime)
	case c.RefillTime <= 0:
		return fmt.Errorf("rate limiter: bucket of %d needs a positive refill time", c.Size)
	case c.Size > 1<<62:
		return fmt.Errorf("rate limiter: bucket size %d is too large", c.Size)
	}
	return nil
}

// Bucket is one token bucket. It is not safe for concurrent use; a device
// worker owns its limiter.
type Bucket struct {
	cfg BucketConfig
	// budget is the balance in tokens, at most cfg.Size; negative after
	// an oversized request.
	budget int64
	burst  uint64
	last   time.Time
	// frac carries the sub-token remainder of refills, in units of
	// 1/RefillTime-nanoseconds of a token, so frequent refills lose nothing.
	frac uint64
}

// NewBucket returns a full bucket, or nil for an unlimited one.
func NewBucket(cfg BucketConfig, now time.Time) (*Bucket, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled() {
		return nil, nil
	}
	return &Bucket{cfg: cfg, budget: int64(cfg.Size), burst: cfg.OneTimeBurst, last: now}, nil
}

// refill adds the tokens earned since the last refill:
// (elapsed*Size + frac) / RefillTime, computed in 128 bits so that no
// product of a large size and a long pause overflows.
func (b *Bucket) refill(now time.Time) {
	elapsed := now.Sub(b.last)
	if elapsed <= 0 {
		return
	}
	b.last = now
	size, refill := b.cfg.Size, uint64(b.cfg.RefillTime)
	if b.budget >= int64(size) {
		b.frac = 0
		return
	}
	hi, lo := bits.Mul64(uint64(elapsed), size)
	lo, carry := bits.Add64(lo, b.frac, 0)
	hi += carry
	missing := uint64(int64(size) - b.budget)
	if hi >= refill { // the quotient needs more than 64 bits: full
		b.budget, b.frac = int64(size), 0
		return
	}
	tokens, rem := bits.Div64(hi, lo, refill)
	if tokens >= missing {
		b.budget, b.frac = int64(size), 0
		return
	}
	b.budget += int64(tokens)
	b.frac = rem
}

// maxRequest bounds one request so that the debt arithmetic stays in int64.
const maxRequest = 1 << 62

// receipt is what one take charged, so that it can be undone exactly.
type receipt struct{ burst, budget uint64 }

// take charges n tokens if they are available (or, for n larger than the
// whole bucket, if the bucket is full) and reports success; on failure it
// charges nothing and returns how long until it would succeed.
func (b *Bucket) take(n uint64, now time.Time) (receipt, bool, time.Duration) {
	b.refill(now)
	n = min(n, maxRequest)
	fromBurst := min(n, b.burst)
	rest := n - fromBurst
	size := int64(b.cfg.Size)
	switch {
	case rest == 0:
	case b.budget > 0 && rest <= uint64(b.budget):
	case rest > uint64(size) && b.budget == size:
		// Oversized: let it through from a full bucket, into debt.
	default:
		need := int64(min(rest, uint64(size))) - b.budget
		return receipt{}, false, b.timeFor(uint64(need))
	}
	b.burst -= fromBurst
	b.budget -= int64(rest)
	return receipt{burst: fromBurst, budget: rest}, true, 0
}

// undo gives back what a take charged.
func (b *Bucket) undo(r receipt) {
	b.burst += r.burst
	b.budget = min(b.budget+int64(r.budget), int64(b.cfg.Size))
}

// timeFor is how long the bucket takes to earn n tokens, rounded up to the
// nanosecond and to at least a microsecond (a shorter timer is pointless).
func (b *Bucket) timeFor(n uint64) time.Duration {
	hi, lo := bits.Mul64(n, uint64(b.cfg.RefillTime))
	if hi >= b.cfg.Size {
		return time.Duration(math.MaxInt64)
	}
	q, rem := bits.Div64(hi, lo, b.cfg.Size)
	if rem != 0 {
		q++
	}
	if q > math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return max(time.Duration(q), time.Microsecond)
}

// Budget is the current balance (negative in debt), for metrics and tests.
func (b *Bucket) Budget(now time.Time) int64 {
	b.refill(now)
	return b.budget
}

// Config is the two buckets of a limiter. The zero value limits nothing.
type Config struct {
	Ops   BucketConfig
	Bytes BucketConfig
}

// Validate checks both buckets.
func (c Config) Validate() error {
	if err := c.Ops.Validate(); err != nil {
		return fmt.Errorf("ops: %w", err)
	}
	if err := c.Bytes.Validate(); err != nil {
		return fmt.Errorf("bandwidth: %w", err)
	}
	return nil
}

// Limiter charges requests against an ops bucket and a bytes bucket.
type Limiter struct {
	ops, bytes *Bucket
	now        func() time.Time
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(l *Limiter) { l.now = now } }

// New returns a limiter; with a zero Config it lets everything through.
func New(cfg Config, opts ...Option) (*Limiter, error) {
	l := &Limiter{now: time.Now}
	for _, o := range opts {
		o(l)
	}
	now := l.now()
	var err error
	if l.ops, err = NewBucket(cfg.Ops, now); err != nil {
		return nil, fmt.Errorf("ops: %w", err)
	}
	if l.bytes, err = NewBucket(cfg.Bytes, now); err != nil {
		return nil, fmt.Errorf("bandwidth: %w", err)
	}
	return l, nil
}

// Unlimited reports whether the limiter limits nothing.
func (l *Limiter) Unlimited() bool { return l == nil || (l.ops == nil && l.bytes == nil) }

// Consume charges one request of ops operations and n bytes. It charges
// both buckets or neither; when it refuses, wait is how long until the
// request would pass (arm a timer, then try again).
func (l *Limiter) Consume(ops, n uint64) (ok bool, wait time.Duration) {
	if l.Unlimited() {
		return true, 0
	}
	now := l.now()
	var opsReceipt receipt
	if l.ops != nil && ops > 0 {
		r, ok, wait := l.ops.take(ops, now)
		if !ok {
			return false, wait
		}
		opsReceipt = r
	}
	if l.bytes != nil && n > 0 {
		if _, ok, wait := l.bytes.take(n, now); !ok {
			if l.ops != nil {
				l.ops.undo(opsReceipt)
			}
			return false, wait
		}
	}
	return true, 0
}
