package voltinit

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptedIDs serves the IDs a test lists, the last one for ever.
type scriptedIDs struct {
	mu  sync.Mutex
	ids [][GenIDSize]byte
	err error
}

func (s *scriptedIDs) read() ([GenIDSize]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.ids[0]
	if len(s.ids) > 1 {
		s.ids = s.ids[1:]
	}
	return id, s.err
}

func TestGenerationWatcherCheck(t *testing.T) {
	tests := []struct {
		name        string
		ids         [][GenIDSize]byte // baseline first
		wantChanges []bool
		wantReseeds []byte // first byte of each reseed's ID
	}{
		{"unchanged", [][GenIDSize]byte{{1}, {1}, {1}}, []bool{false, false}, nil},
		{"one restore", [][GenIDSize]byte{{1}, {1}, {2}, {2}}, []bool{false, true, false}, []byte{2}},
		{"restored twice", [][GenIDSize]byte{{1}, {2}, {3}}, []bool{true, true}, []byte{2, 3}},
		{"back to the boot's ID is a change too", [][GenIDSize]byte{{1}, {2}, {1}}, []bool{true, true}, []byte{2, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids := &scriptedIDs{ids: tt.ids}
			var reseeds []byte
			var logged []string
			w := &GenerationWatcher{
				Read:   ids.read,
				Reseed: func(id []byte) error { reseeds = append(reseeds, id[0]); return nil },
				Logf:   func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) },
			}
			if err := w.Baseline(); err != nil {
				t.Fatal(err)
			}
			var changes []bool
			for range tt.wantChanges {
				c, err := w.Check()
				if err != nil {
					t.Fatal(err)
				}
				changes = append(changes, c)
			}
			if fmt.Sprint(changes) != fmt.Sprint(tt.wantChanges) || fmt.Sprint(reseeds) != fmt.Sprint(tt.wantReseeds) {
				t.Errorf("changes %v reseeds %v, want %v and %v", changes, reseeds, tt.wantChanges, tt.wantReseeds)
			}
			if len(logged) != len(tt.wantReseeds) {
				t.Errorf("logged %q, want one line per reseed", logged)
			}
			for _, l := range logged {
				if !strings.HasPrefix(l, "generation changed to ") || !strings.HasSuffix(l, ": RNG reseeded") {
					t.Errorf("log line %q", l)
				}
			}
		})
	}
}

func TestGenerationWatcherWithoutBaselineDoesNothing(t *testing.T) {
	ids := &scriptedIDs{ids: [][GenIDSize]byte{{0xff}}, err: errors.New("no generation-ID device at port 0xf00")}
	reseeded := false
	w := &GenerationWatcher{Read: ids.read, Reseed: func([]byte) error { reseeded = true; return nil }, Logf: t.Logf}
	if err := w.Baseline(); err == nil {
		t.Fatal("Baseline succeeded without a device")
	}
	if _, err := w.Check(); !errors.Is(err, ErrNoBaseline) || reseeded {
		t.Fatalf("Check without a baseline: %v (reseeded %v), want ErrNoBaseline", err, reseeded)
	}
}

func TestGenerationWatcherRetriesFailedReseed(t *testing.T) {
	ids := &scriptedIDs{ids: [][GenIDSize]byte{{1}, {9}}}
	fail := true
	w := &GenerationWatcher{
		Read: ids.read,
		Reseed: func([]byte) error {
			if fail {
				return errors.New("no /dev/urandom")
			}
			return nil
		},
		Logf: t.Logf,
	}
	if err := w.Baseline(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Check(); err == nil || !strings.Contains(err.Error(), "reseed RNG: no /dev/urandom") {
		t.Fatalf("failed reseed reported as %v", err)
	}
	fail = false
	if c, err := w.Check(); err != nil || !c {
		t.Fatalf("retry: changed=%v err=%v; the baseline advanced although the reseed failed", c, err)
	}
}

// TestGenerationWatcherReseedsOnceForConcurrentChecks: the poll and the
// agent's connections check at once after a restore; one of them reseeds.
func TestGenerationWatcherReseedsOnceForConcurrentChecks(t *testing.T) {
	ids := &scriptedIDs{ids: [][GenIDSize]byte{{1}, {2}}}
	var mu sync.Mutex
	reseeds := 0
	w := &GenerationWatcher{
		Read:   ids.read,
		Reseed: func([]byte) error { mu.Lock(); reseeds++; mu.Unlock(); return nil },
		Logf:   func(string, ...any) {},
	}
	if err := w.Baseline(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := w.Check(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if reseeds != 1 {
		t.Errorf("%d reseeds for one restore", reseeds)
	}
}

// countingTicker fires n times, then reports itself closed.
type countingTicker struct{ n int }

func (c *countingTicker) Each(fn func()) error {
	for range c.n {
		fn()
	}
	return errors.New("closed")
}

func TestGenerationPollLogsAFailureOnce(t *testing.T) {
	ids := &scriptedIDs{ids: [][GenIDSize]byte{{1}}}
	var logged []string
	w := &GenerationWatcher{
		Read:   ids.read,
		Reseed: func([]byte) error { return nil },
		Logf:   func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) },
	}
	if err := w.Baseline(); err != nil {
		t.Fatal(err)
	}
	ids.err = errors.New("ioperm 0xf00: operation not permitted")
	w.Poll(&countingTicker{n: 50})
	if len(logged) != 1 || logged[0] != "generation ID: ioperm 0xf00: operation not permitted" {
		t.Errorf("50 failing ticks logged %q, want the failure once", logged)
	}
}

func TestTimerfdTickerFiresAndStopsOnClose(t *testing.T) {
	for _, period := range []time.Duration{0, -time.Second} {
		if _, err := NewTimerfdTicker(period); err == nil {
			t.Errorf("NewTimerfdTicker(%v) succeeded", period)
		}
	}
	const period = 5 * time.Millisecond
	tk, err := NewTimerfdTicker(period)
	if err != nil {
		t.Fatal(err)
	}
	ticks := make(chan time.Time, 1000)
	done := make(chan error, 1)
	go func() {
		first := true
		done <- tk.Each(func() {
			ticks <- time.Now()
			if first {
				// A slow check: the expiries it misses are one tick.
				first = false
				time.Sleep(10 * period)
			}
		})
	}()
	start := time.Now()
	var at []time.Time
	for len(at) < 4 {
		select {
		case ts := <-ticks:
			at = append(at, ts)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d ticks of %v in 5 s", len(at), period)
		}
	}
	if at[0].Sub(start) < 0 || at[1].Sub(at[0]) < 10*period {
		t.Errorf("ticks at %v after the start", at)
	}
	// The slow check missed about ten expiries: one tick follows at once
	// for all of them, and the next comes a period later, not ten at once.
	if gap := at[3].Sub(at[2]); gap < period/2 {
		t.Errorf("ticks %v apart after a slow one: the missed expiries came as a burst", gap)
	}
	if err := tk.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Each ended without an error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end Each")
	}
}
