package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Arm is one side of a session: a name for its rows and how to boot it.
type Arm struct {
	Name   string // "volt", "qemu", "volt-base", …
	Config Config
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

// ErrTooManyFailures ends a session whose boots keep failing.
var ErrTooManyFailures = errors.New("too many failed boots")

// RunPlan boots every arm N times and returns one Run per arm, in order.
// The runs hold whatever completed even when an error is returned.
func (r *Runner) RunPlan(ctx context.Context, p Plan) ([]*Run, error) {
	if p.N < 1 {
		return nil, fmt.Errorf("plan: %d boots", p.N)
	}
	if len(p.Arms) == 0 {
		return nil, errors.New("plan: no VMM to boot")
	}
	runs := make([]*Run, len(p.Arms))
	for i, a := range p.Arms {
		if err := a.Config.Validate(); err != nil {
			return nil, fmt.Errorf("plan: %s: %w", a.Name, err)
		}
		runs[i] = NewRunOf(a.Name, a.Config.Guest, a.Config.rows())
		runs[i].Kernel = a.Config.Kernel
		if a.Config.RestoreDir != "" {
			runs[i].Unit = "restores"
		}
		runs[i].Args = append([]string{a.Config.VMMBin}, a.Config.Args()...)
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
			runs[j].Add(b)
			if p.Observe != nil {
				p.Observe(a, b)
			}
			if b.Err != nil {
				failures++
				if p.Log != nil {
					p.Progress.Clear()
					fmt.Fprintf(p.Log, "voltbench: %s boot %d failed after %v: %v\n", a.Name, i+1, time.Since(start).Round(time.Millisecond), b.Err)
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
