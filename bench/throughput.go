package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/results"
)

// ThroughputGoal is issue 14's target for restores of the probe, noted
// beside the figures and never asserted: a goal, not a test.
const ThroughputGoal = "≥ 500 restores/s on 2 cores"

// MaxConcurrency bounds the restores in flight: the tracer watches at most
// 64 processes at once, and far fewer already saturate this machine.
const MaxConcurrency = 32

// ThroughputSpec says how to measure restores per second.
type ThroughputSpec struct {
	Config Config // one restore (RestoreConfig)
	// Levels are the numbers of restores in flight at once, each its own
	// VMM process on the same snapshot (e.g. 1, 2, 8).
	Levels []int
	// N restores per level, run in Rounds rounds that alternate the
	// levels, so that a slow minute of a shared machine hits them alike.
	N, Rounds int
	// Floor, when set, is run the same way at every level, batch for
	// batch beside the restores (floor-kvm-answer): the rate this machine
	// and this launcher reach with nothing of a VMM.
	Floor    *Config
	Progress *Progress // may be nil
}

// ThroughputRounds is how many rounds voltbench splits each level's
// restores into.
const ThroughputRounds = 4

// Validate checks the spec before anything starts.
func (s ThroughputSpec) Validate() error {
	var floorErr error
	if s.Floor != nil {
		floorErr = s.Floor.Validate()
	}
	return errors.Join(s.Config.Validate(), floorErr, ValidateThroughput(s.Levels, s.N, s.Rounds))
}

// ValidateThroughput checks concurrency levels and the restores per level,
// so that flags can be refused before a snapshot is made.
func ValidateThroughput(levels []int, n, rounds int) error {
	var errs []error
	if len(levels) == 0 {
		errs = append(errs, errors.New("no concurrency level"))
	}
	seen := map[int]bool{}
	for _, l := range levels {
		if l < 1 || l > MaxConcurrency {
			errs = append(errs, fmt.Errorf("concurrency %d outside 1–%d", l, MaxConcurrency))
		}
		if seen[l] {
			errs = append(errs, fmt.Errorf("concurrency %d given twice", l))
		}
		seen[l] = true
	}
	if rounds < 1 || n < rounds {
		errs = append(errs, fmt.Errorf("%d restores per level in %d rounds: want at least one per round", n, rounds))
	}
	return errors.Join(errs...)
}

// Throughput is what one concurrency level achieved.
type Throughput struct {
	Concurrency int
	Restores    int           // attempted
	Failures    int           // of them
	Wall        time.Duration // summed over the level's batches: first exec to last exit
	// Run holds the per-restore stage times of the successful restores,
	// timed as in a latency run, while the others ran beside them.
	Run *results.Run
	// FirstErr is the first failure's message, if any.
	FirstErr error
	// The floor's batches at the same level, when the spec has a floor.
	Floor *Throughput
}

// PerSecond is successful restores per second of wall time.
func (t Throughput) PerSecond() float64 {
	if t.Wall <= 0 {
		return 0
	}
	return float64(t.Restores-t.Failures) / t.Wall.Seconds()
}

// add counts one batch.
func (t *Throughput) add(boots []Boot, wall time.Duration, step func(failed bool)) {
	t.Wall += wall
	for _, b := range boots {
		t.Restores++
		if err := t.Run.Add(b.Observation()); err != nil && b.Err == nil {
			b.Err = err
		}
		if b.Err != nil {
			t.Failures++
			if t.FirstErr == nil {
				t.FirstErr = b.Err
			}
		}
		step(b.Err != nil)
	}
}

// RunThroughput restores spec.Config over and over with each level's number
// of restores in flight at once: a batch keeps that many VMM processes
// running (each restores, answers, powers off) until its share of restores
// is done. Nothing else boots meanwhile; the levels alternate by round.
func (r *Runner) RunThroughput(ctx context.Context, spec ThroughputSpec) ([]Throughput, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Throughput, len(spec.Levels))
	for i, l := range spec.Levels {
		arm := Arm{Name: fmt.Sprintf("restore ×%d", l), Config: spec.Config}
		out[i] = Throughput{Concurrency: l, Run: NewRun(arm)}
		if spec.Floor != nil {
			farm := Arm{Name: fmt.Sprintf("%s ×%d", FloorKVMAnswer, l), Config: *spec.Floor}
			out[i].Floor = &Throughput{Concurrency: l, Run: NewRun(farm)}
		}
	}
	perLevel := 1
	if spec.Floor != nil {
		perLevel = 2
	}
	spec.Progress.Start(spec.N * len(spec.Levels) * perLevel)
	defer spec.Progress.Done()
	var failures int
	step := func(failed bool) {
		if failed {
			failures++
		}
		spec.Progress.Step(failures)
	}
	for round := 0; round < spec.Rounds; round++ {
		// The round's share, the remainder in the last round.
		n := spec.N / spec.Rounds
		if round == spec.Rounds-1 {
			n = spec.N - n*(spec.Rounds-1)
		}
		for i := range out {
			if err := ctx.Err(); err != nil {
				return out, fmt.Errorf("throughput stopped: %w", err)
			}
			if spec.Floor != nil {
				boots, wall := r.batch(ctx, *spec.Floor, out[i].Concurrency, n)
				out[i].Floor.add(boots, wall, step)
			}
			boots, wall := r.batch(ctx, spec.Config, out[i].Concurrency, n)
			out[i].add(boots, wall, step)
		}
	}
	return out, nil
}

// batch runs n restores with at most inflight at once and returns them
// with the wall time from the first start to the last exit. Its workers
// are waited for before it returns.
func (r *Runner) batch(ctx context.Context, cfg Config, inflight, n int) ([]Boot, time.Duration) {
	boots := make([]Boot, n)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < min(inflight, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				boots[i] = r.boot(ctx, cfg)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return boots, time.Since(start)
}

// WriteThroughput prints restores per second and the restore rows' p50 and
// tail per concurrency level.
func WriteThroughput(w io.Writer, levels []Throughput) error {
	fmt.Fprintf(w, "restores per second, each restore its own volt-vmm process on the same snapshot (restore, answer, power off); %d CPUs here; goal %s (not asserted)\n",
		runtime.NumCPU(), ThroughputGoal)
	if len(levels) == 0 {
		return nil
	}
	rows := []string{"guest-entry", "first-answer", "exit"}
	var fewest int64 = -1
	for _, l := range levels {
		for _, name := range rows {
			if s := l.Run.Stage(name); s != nil && (fewest < 0 || s.Count < fewest) {
				fewest = s.Count
			}
		}
	}
	tail := "max"
	if fewest >= 100 {
		tail = "p99"
	}
	withFloor := levels[0].Floor != nil
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "in flight\trestores\tfailed\twall s\trestores/s\t")
	if withFloor {
		fmt.Fprint(tw, "floor runs/s\tof floor\t")
	}
	for _, name := range rows {
		fmt.Fprintf(tw, "%s p50\t%s %s\t", name, name, tail)
	}
	fmt.Fprintln(tw)
	for _, l := range levels {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.2f\t%.1f\t", l.Concurrency, l.Restores, l.Failures, l.Wall.Seconds(), l.PerSecond())
		if withFloor {
			f := "-"
			if l.Floor != nil && l.Floor.PerSecond() > 0 {
				f = fmt.Sprintf("%.0f %%", 100*l.PerSecond()/l.Floor.PerSecond())
			}
			fmt.Fprintf(tw, "%.1f\t%s\t", l.Floor.PerSecond(), f)
		}
		for _, name := range rows {
			s := l.Run.Stage(name)
			if s == nil {
				fmt.Fprint(tw, "-\t-\t")
				continue
			}
			t, _ := s.Tail()
			if tail == "max" {
				t = s.MaxUS
			}
			fmt.Fprintf(tw, "%s\t%s\t", report.FormatMS(s.P50US, s.Count), report.FormatMS(t, s.Count))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "(ms since each restore's exec; wall: first exec to last exit of each batch, summed; every process, restore or floor, is started by the same launcher, straight from os/exec)")
	if withFloor {
		fmt.Fprintf(w, "floor: %s run the same way, batch for batch at each level; \"of floor\" is restores/s over its runs/s\n", FloorKVMAnswer)
	}
	var errs []string
	for _, l := range levels {
		if l.FirstErr != nil {
			errs = append(errs, fmt.Sprintf("×%d: %v", l.Concurrency, l.FirstErr))
		}
		if l.Floor != nil && l.Floor.FirstErr != nil {
			errs = append(errs, fmt.Sprintf("floor ×%d: %v", l.Concurrency, l.Floor.FirstErr))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "first failure per level:\n  %s\n", strings.Join(errs, "\n  "))
	}
	return nil
}
