package pool

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/api/client"
)

// BenchmarkWarmAcquire times an acquire of a warm VM through the API (the
// pool refilled before each), beside the VMM's own PATCH /vm Resumed on an
// equally warm VMM, measured alternately in one run, so the pool's share of
// the acquire is visible.
func BenchmarkWarmAcquire(b *testing.B) {
	s := serve(b, Config{})
	s.probeTemplate(b, "probe", 2)
	ctx := context.Background()
	var acquire, resume []time.Duration
	for i := 0; i < b.N; i++ {
		s.waitWarm(b, "probe", 2)
		t0 := time.Now()
		l, err := s.client.Acquire(ctx, "probe", time.Minute)
		acquire = append(acquire, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		s.client.Release(ctx, l.ID)
		s.waitWarm(b, "probe", 2)
		// The VMM alone: take a warm VMM out of the pool and resume it
		// directly.
		s.pool.mu.Lock()
		t := s.pool.templates["probe"]
		v := t.warm[0]
		t.warm = t.warm[1:]
		v.state = vmLeased
		t.leased++
		s.pool.mu.Unlock()
		c := client.New(v.api.Socket())
		t1 := time.Now()
		err = c.Resume(ctx)
		resume = append(resume, time.Since(t1))
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		s.pool.mu.Lock()
		t.leased--
		s.pool.stop(v)
		s.pool.mu.Unlock()
	}
	b.StopTimer()
	b.ReportMetric(float64(median(acquire).Microseconds()), "acquire-p50-µs")
	b.ReportMetric(float64(median(resume).Microseconds()), "vmm-resume-p50-µs")
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
