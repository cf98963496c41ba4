package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/results"
)

// Arm is one side of a session: a name for its rows and how to boot it.
type Arm struct {
	Name   string // "volt", "qemu", "volt-base", "floor-kvm", …
	Config Config
	// Floor names the arm of the same session whose run is this arm's
	// floor (its ratios are taken to it); "" for none.
	Floor string
}

// Floors maps each arm's run to its floor's run, for report.WriteTable,
// WriteCompare and the plots. runs are RunPlan's, in the arms' order.
func Floors(arms []Arm, runs []*results.Run) report.Floors {
	byName := map[string]*results.Run{}
	for i, r := range runs {
		if i < len(arms) {
			byName[arms[i].Name] = r
		}
	}
	f := report.Floors{}
	for _, a := range arms {
		if fl := byName[a.Floor]; a.Floor != "" && fl != nil {
			f[a.Name] = fl
		}
	}
	return f
}

// Plan is a set of boots: N of every arm, interleaved (A B A B …) so that
// a slow minute on a shared machine hits every arm alike.
type Plan struct {
	Arms     []Arm
	N        int
	Progress *Progress       // may be nil
	Observe  func(Arm, Boot) // called after every boot, e.g. to export metrics
	Log      io.Writer       // failed boots are reported here; may be nil
	// MaxFailures stops the session early once this many boots failed, so
	// that a broken build does not wait out N timeouts. 0 means N/4+1.
	MaxFailures int
}

// NewRun starts the empty run of an arm: its rows, and the command line
// that each of its boots runs.
func NewRun(a Arm) *results.Run {
	r := results.NewRun(a.Name, a.Config.Guest, stageNames(a.Config.rows()))
	r.Kernel = a.Config.Kernel
	switch {
	case a.Config.VMM == VMMFloor:
		r.Unit, r.Floor = results.UnitRuns, true
	case a.Config.RestoreDir != "":
		r.Unit = results.UnitRestores
	}
	bin := a.Config.VMMBin
	if a.Config.Jail != nil {
		bin = a.Config.Jail.Jailer
	}
	r.Args = append([]string{bin}, a.Config.Args()...)
	r.FloorRun = a.Floor
	return r
}

// ErrTooManyFailures ends a session whose boots keep failing.
var ErrTooManyFailures = errors.New("too many failed boots")

// RunPlan boots every arm N times and returns one Run per arm, in order.
// The runs hold whatever completed even when an error is returned.
func (r *Runner) RunPlan(ctx context.Context, p Plan) ([]*results.Run, error) {
	if p.N < 1 {
		return nil, fmt.Errorf("plan: %d boots", p.N)
	}
	if len(p.Arms) == 0 {
		return nil, errors.New("plan: no VMM to boot")
	}
	runs := make([]*results.Run, len(p.Arms))
	names := map[string]bool{}
	for i, a := range p.Arms {
		if err := a.Config.Validate(); err != nil {
			return nil, fmt.Errorf("plan: %s: %w", a.Name, err)
		}
		if names[a.Name] {
			return nil, fmt.Errorf("plan: two arms named %s", a.Name)
		}
		names[a.Name] = true
		runs[i] = NewRun(a)
	}
	for _, a := range p.Arms {
		if a.Floor != "" && !names[a.Floor] {
			return nil, fmt.Errorf("plan: %s: floor %s is not an arm of the plan", a.Name, a.Floor)
		}
	}
	maxFail := p.MaxFailures
	if maxFail <= 0 {
		maxFail = p.N/4 + 1
	}
	total := p.N * len(p.Arms)
	p.Progress.Start(total)
	defer p.Progress.Done()
	failures := 0
	for i := 0; i < p.N; i++ {
		for j, a := range p.Arms {
			if err := ctx.Err(); err != nil {
				return runs, fmt.Errorf("session stopped: %w", err)
			}
			start := time.Now()
			b := r.Boot(ctx, a.Config)
			if err := runs[j].Add(b.Observation()); err != nil && b.Err == nil {
				// Boot checks every row itself; this is the last line.
				b.Err = err
			}
			if p.Observe != nil {
				p.Observe(a, b)
			}
			if b.Err != nil {
				failures++
				if p.Log != nil {
					p.Progress.Clear()
					fmt.Fprintf(p.Log, "voltbench: %s %d failed after %v: %v\n", a.Name, i+1, time.Since(start).Round(time.Millisecond), b.Err)
				}
				if failures >= maxFail {
					return runs, fmt.Errorf("%w: %d of %d", ErrTooManyFailures, failures, i*len(p.Arms)+j+1)
				}
			}
			p.Progress.Step(failures)
		}
	}
	return runs, nil
}
