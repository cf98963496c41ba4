package bench

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
)

// GateMinSamples is the fewest successful boots per side the gate accepts.
// The gate tests two quantiles of six stages and divides alpha among the
// twelve tests (Bonferroni), so each needs p < 0.01/12 ≈ 0.00083; a
// complete separation of the medians gets there only from about 10 boots a
// side (exact p = 0.00038 at 10 against 10, 0.0014 at 9).
const GateMinSamples = 10

// GateRow is the verdict on one stage.
type GateRow struct {
	Stage    string
	P50, P99 Verdict
	Missing  string // why the stage could not be compared, if it could not
}

// Regressed reports whether the row fails the gate.
func (g GateRow) Regressed() bool { return g.P50.Regressed || g.P99.Regressed || g.Missing != "" }

// GateResult is the gate's answer.
type GateResult struct {
	Base, Cand   string // run names
	Rows         []GateRow
	Alpha        float64 // per test, after the Bonferroni division
	Tolerance    Tolerance
	CandFailures int
	Failed       bool
}

// ErrGateInput means the gate could not judge (too few boots, …); it is
// not a verdict on the candidate.
var ErrGateInput = errors.New("gate cannot judge")

// Gate compares every gated stage of cand against base, at p50 and p99,
// with one-sided permutation tests: for p50 on the rank sum (CompareShift:
// robust when a loaded machine stalls some boots), for p99 on the p99
// difference itself (Compare), each with the noise floors on the quantile. The family of tests
// shares tol.Alpha (Bonferroni), so a clean run fails with probability at
// most Alpha however many stages there are. A stage that base reaches but
// cand never does, or any failed candidate boot, fails the gate outright.
func Gate(base, cand *Run, tol Tolerance) (GateResult, error) {
	res := GateResult{Base: base.VMM, Cand: cand.VMM, Tolerance: tol, CandFailures: cand.Failures}
	if err := tol.Validate(); err != nil {
		return res, fmt.Errorf("%w: tolerance: %w", ErrGateInput, err)
	}
	var tests int
	for _, s := range Stages {
		if s.Gated && base.Stage(s.Name) != nil && base.Stage(s.Name).Count > 0 {
			tests += 2
		}
	}
	if tests == 0 {
		return res, fmt.Errorf("%w: the baseline %s has no gated stage", ErrGateInput, base.VMM)
	}
	per := tol
	per.Alpha = tol.Alpha / float64(tests)
	res.Alpha = per.Alpha
	for _, s := range Stages {
		if !s.Gated {
			continue
		}
		bs := base.Stage(s.Name)
		if bs == nil || bs.Count == 0 {
			continue
		}
		row := GateRow{Stage: s.Name}
		a, b := bs.Samples(), cand.Stage(s.Name).Samples()
		switch {
		case len(b) == 0:
			row.Missing = "never reached by the candidate"
		case len(a) < GateMinSamples || len(b) < GateMinSamples:
			return res, fmt.Errorf("%w: stage %s has %d baseline and %d candidate samples, need %d each (run more boots: -n)", ErrGateInput, s.Name, len(a), len(b), GateMinSamples)
		default:
			var err error
			if row.P50, err = CompareShift(a, b, 0.5, per); err != nil {
				return res, fmt.Errorf("%w: %s p50: %w", ErrGateInput, s.Name, err)
			}
			if row.P99, err = Compare(a, b, 0.99, per); err != nil {
				return res, fmt.Errorf("%w: %s p99: %w", ErrGateInput, s.Name, err)
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

// WriteGate prints the gate's table: every gated stage, with the failing
// ones marked.
func WriteGate(w io.Writer, g GateResult) error {
	fmt.Fprintf(w, "gate: %s (candidate) vs %s (baseline); one-sided permutation test, alpha %.2g per test (%.2g over %d tests), noise floor max(%.0f%%, %.0f µs)\n",
		g.Cand, g.Base, g.Alpha, g.Tolerance.Alpha, 2*len(g.Rows), 100*g.Tolerance.RelFloor, g.Tolerance.AbsFloorUS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tbase p50\tcand p50\tΔ p50\tp\tbase p99\tcand p99\tΔ p99\tp\tverdict\t")
	for _, r := range g.Rows {
		if r.Missing != "" {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\t\t\t\tREGRESSED: %s\t\n", r.Stage, r.Missing)
			continue
		}
		verdict := "ok"
		switch {
		case r.P50.Regressed && r.P99.Regressed:
			verdict = "REGRESSED p50, p99"
		case r.P50.Regressed:
			verdict = "REGRESSED p50"
		case r.P99.Regressed:
			verdict = "REGRESSED p99"
		case r.P50.Significant || r.P99.Significant:
			verdict = "ok (under noise floor)"
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%+.1f%%\t%.2g\t%.3f\t%.3f\t%+.1f%%\t%.2g\t%s\t\n", r.Stage,
			r.P50.BaseUS/1000, r.P50.CandUS/1000, 100*r.P50.Rel, r.P50.P,
			r.P99.BaseUS/1000, r.P99.CandUS/1000, 100*r.P99.Rel, r.P99.P, verdict)
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
