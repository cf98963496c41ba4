// Package gate decides whether a candidate's boots regressed against a
// baseline: per gated stage, a one-sided permutation test at the median and
// one at the tail (p99 from 100 boots a side, else the maximum), alpha shared
// by all tests, and noise floors for a shared machine. Decide turns the
// verdicts of a session (a same-run A/B and/or the baseline file) into the
// gate's answer; the runner that produced the boots is not its business.
package gate

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/stats"
)

// MinSamples is the fewest successful boots per side the gate accepts.
// The gate tests two quantiles of six stages and divides alpha among the
// twelve tests (Bonferroni), so each needs p < 0.01/12 ≈ 0.00083; a
// complete separation of the medians gets there only from about 10 boots a
// side (exact p = 0.00038 at 10 against 10, 0.0014 at 9).
const MinSamples = 10

// Row is the verdict on one stage.
type Row struct {
	Stage        string
	Median, Tail stats.Verdict
	// TailLabel names what Tail compared: "p99", or "max" when a side has
	// fewer than stats.TailMinSamples boots (see stats.Tail).
	TailLabel string
	Missing   string // why the stage could not be compared, if it could not
}

// Regressed reports whether the row fails the gate.
func (r Row) Regressed() bool { return r.Median.Regressed || r.Tail.Regressed || r.Missing != "" }

// Result is the gate's answer on one candidate against one baseline.
type Result struct {
	Base, Cand   string // run names
	Rows         []Row
	Alpha        float64 // per test, after the Bonferroni division
	Tolerance    stats.Tolerance
	CandFailures int
	Failed       bool
}

// ErrInput means the gate could not judge (too few boots, …); it is not a
// verdict on the candidate.
var ErrInput = errors.New("gate cannot judge")

// Judge compares each of the gated stages of cand against base, at the
// median and the tail, with one-sided permutation tests: for the median on
// the rank sum (stats.CompareShift: robust when a loaded machine stalls some
// boots), for the tail on the difference of the tail quantiles themselves
// (stats.Compare), each with the noise floors on the quantile. The family
// of tests shares tol.Alpha (Bonferroni), so a clean run fails with
// probability at most Alpha however many stages there are. A stage that
// base reaches but cand never does, or any failed candidate boot, fails the
// gate outright.
func Judge(base, cand *results.Run, gated []string, tol stats.Tolerance) (Result, error) {
	res := Result{Base: base.VMM, Cand: cand.VMM, Tolerance: tol, CandFailures: cand.Failures}
	if err := tol.Validate(); err != nil {
		return res, fmt.Errorf("%w: tolerance: %w", ErrInput, err)
	}
	var tests int
	for _, name := range gated {
		if bs := base.Stage(name); bs != nil && bs.Count > 0 {
			tests += 2
		}
	}
	if tests == 0 {
		return res, fmt.Errorf("%w: the baseline %s has no gated stage", ErrInput, base.VMM)
	}
	per := tol
	per.Alpha = tol.Alpha / float64(tests)
	res.Alpha = per.Alpha
	for _, name := range gated {
		bs := base.Stage(name)
		if bs == nil || bs.Count == 0 {
			continue
		}
		row := Row{Stage: name}
		a, b := bs.Samples(), cand.Stage(name).Samples()
		switch {
		case len(b) == 0:
			row.Missing = "never reached by the candidate"
		case len(a) < MinSamples || len(b) < MinSamples:
			return res, fmt.Errorf("%w: stage %s has %d baseline and %d candidate samples, need %d each (run more boots: -n)", ErrInput, name, len(a), len(b), MinSamples)
		default:
			var err error
			if row.Median, err = stats.CompareShift(a, b, 0.5, per); err != nil {
				return res, fmt.Errorf("%w: %s p50: %w", ErrInput, name, err)
			}
			var q float64
			q, row.TailLabel = stats.Tail(min(len(a), len(b)))
			if row.Tail, err = stats.Compare(a, b, q, per); err != nil {
				return res, fmt.Errorf("%w: %s %s: %w", ErrInput, name, row.TailLabel, err)
			}
		}
		if row.Regressed() {
			res.Failed = true
		}
		res.Rows = append(res.Rows, row)
	}
	if cand.Failures > 0 {
		res.Failed = true
	}
	return res, nil
}

// Write prints the gate's table: every gated stage, with the failing ones
// marked. The tail columns are named by what they compared (p99 or max).
func (g Result) Write(w io.Writer) error {
	tail := "max"
	for _, r := range g.Rows {
		if r.TailLabel != "" {
			tail = r.TailLabel
			break
		}
	}
	fmt.Fprintf(w, "gate: %s (candidate) vs %s (baseline); one-sided permutation tests at p50 and %s, alpha %.2g per test (%.2g over %d tests), noise floor max(%.0f%%, %.0f µs)\n",
		g.Cand, g.Base, tail, g.Alpha, g.Tolerance.Alpha, 2*len(g.Rows), 100*g.Tolerance.RelFloor, g.Tolerance.AbsFloorUS)
	if tail == "max" {
		fmt.Fprintf(w, "(fewer than %d boots a side: the tail compared is the maximum, not a p99)\n", stats.TailMinSamples)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "stage\tbase p50\tcand p50\tΔ p50\tp\tbase %s\tcand %s\tΔ %s\tp\tverdict\t\n", tail, tail, tail)
	for _, r := range g.Rows {
		if r.Missing != "" {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\t\t\t\tREGRESSED: %s\t\n", r.Stage, r.Missing)
			continue
		}
		verdict := "ok"
		switch {
		case r.Median.Regressed && r.Tail.Regressed:
			verdict = "REGRESSED p50, " + r.TailLabel
		case r.Median.Regressed:
			verdict = "REGRESSED p50"
		case r.Tail.Regressed:
			verdict = "REGRESSED " + r.TailLabel
		case r.Median.Significant || r.Tail.Significant:
			verdict = "ok (under noise floor)"
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%+.1f%%\t%.2g\t%.3f\t%.3f\t%+.1f%%\t%.2g\t%s\t\n", r.Stage,
			r.Median.BaseUS/1000, r.Median.CandUS/1000, 100*r.Median.Rel, r.Median.P,
			r.Tail.BaseUS/1000, r.Tail.CandUS/1000, 100*r.Tail.Rel, r.Tail.P, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if g.CandFailures > 0 {
		fmt.Fprintf(w, "REGRESSED: %d candidate boots failed\n", g.CandFailures)
	}
	if g.Failed {
		fmt.Fprintln(w, "gate: FAIL")
	} else {
		fmt.Fprintln(w, "gate: pass")
	}
	return nil
}

// Inputs are what a gate session produced: the candidate's boots and the
// baselines to judge them against.
type Inputs struct {
	Cand *results.Run
	// File is the baseline recorded in another session (ci/boot-baseline.json),
	// judged with FileTol; nil to skip.
	File     *results.Run
	FileName string
	FileTol  stats.Tolerance
	// AB is a baseline binary booted interleaved with the candidate in this
	// session, judged with ABTol; nil without one. When present it decides
	// and the file comparison is for information only: both sides of an
	// A/B saw the same minutes of a shared machine.
	AB     *results.Run
	ABName string
	ABTol  stats.Tolerance
	// Gated lists the stages judged.
	Gated []string
}

// Judgement is one comparison of a decision.
type Judgement struct {
	Label string
	// Informational judgements are printed but do not decide.
	Informational bool
	Result        Result
	Err           error // the comparison could not be made (ErrInput)
}

// Decision is the gate's answer over a session.
type Decision struct {
	Judgements []Judgement
	Failed     bool
}

// Decide judges the candidate against the A/B baseline when there is one
// (it decides) and against the file (information only then, deciding
// otherwise). An error means the deciding comparison could not be made;
// an informational one that cannot is reported in its Judgement.
func Decide(in Inputs) (Decision, error) {
	var d Decision
	if in.Cand == nil {
		return d, fmt.Errorf("%w: no candidate run", ErrInput)
	}
	if in.File == nil && in.AB == nil {
		return d, fmt.Errorf("%w: no baseline: neither a file nor a same-run A/B", ErrInput)
	}
	if in.File != nil {
		j := Judgement{Label: "against " + in.FileName, Informational: in.AB != nil}
		if j.Informational {
			j.Label += " (information only; the same-run A/B decides)"
		}
		j.Result, j.Err = Judge(in.File, in.Cand, in.Gated, in.FileTol)
		if j.Err != nil && !j.Informational {
			return d, fmt.Errorf("%s: %w", j.Label, j.Err)
		}
		d.Judgements = append(d.Judgements, j)
	}
	if in.AB != nil {
		j := Judgement{Label: "same-run A/B against " + in.ABName}
		j.Result, j.Err = Judge(in.AB, in.Cand, in.Gated, in.ABTol)
		if j.Err != nil {
			return d, fmt.Errorf("%s: %w", j.Label, j.Err)
		}
		d.Judgements = append(d.Judgements, j)
	}
	for _, j := range d.Judgements {
		if !j.Informational && j.Err == nil && j.Result.Failed {
			d.Failed = true
		}
	}
	return d, nil
}

// Write prints every judgement, then the decision.
func (d Decision) Write(w io.Writer) error {
	for _, j := range d.Judgements {
		fmt.Fprintf(w, "== %s\n", j.Label)
		if j.Err != nil {
			fmt.Fprintf(w, "not judged: %v\n", j.Err)
			continue
		}
		if err := j.Result.Write(w); err != nil {
			return err
		}
	}
	verdict := "pass"
	if d.Failed {
		verdict = "FAIL"
	}
	_, err := fmt.Fprintf(w, "gate decision: %s\n", verdict)
	return err
}
