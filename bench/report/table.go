// Package report prints voltbench's results for people: tables of stage
// times (with each stage's distance to the floor measured in the same
// session) and SVG plots of each stage's latency distribution. It reads
// results.Run only; it neither boots nor judges.
package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/stats"
)

// FormatMS formats microseconds as milliseconds; "-" when nothing was
// counted.
func FormatMS(us float64, count int64) string {
	if count == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", us/1000)
}

// minCount is the fewest samples of any stage of the runs that has any: the
// tail label of a table must hold for all its rows.
func minCount(runs ...*results.Run) int {
	n := -1
	for _, r := range runs {
		if r == nil {
			continue
		}
		for _, s := range r.Rows() {
			if s.Count > 0 && (n < 0 || int(s.Count) < n) {
				n = int(s.Count)
			}
		}
	}
	return max(n, 0)
}

// tailOf is a stage's tail figure at the quantile named by label: the p99
// when there is one and label asks for it, else the maximum.
func tailOf(s *results.StageResult, label string) float64 {
	if label == "p99" && s.P99US != nil {
		return *s.P99US
	}
	return s.MaxUS
}

// Ratio formats b/a as "N.NN×"; "-" when either is missing.
func Ratio(a, b float64, ca, cb int64) string {
	if ca == 0 || cb == 0 || a <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", b/a)
}

func kvmExits(r *results.Run, s *results.StageResult) string {
	if s.Count == 0 {
		return "-"
	}
	if s.KVMExits == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", *s.KVMExits)
}

// WriteTable prints one run: a row per stage, times in ms from the exec of
// the VMM, and the mean exits during the stage. The tail column is p99 only
// from 100 boots on, else max alone. With floor (a floor helper's run from
// the same session), each stage also gets the floor's figures and the
// ratio run/floor at p50 and at the tail: the distance to this machine's
// limit.
func WriteTable(w io.Writer, r *results.Run, floor *results.Run) error {
	fmt.Fprintf(w, "%s, guest %s: %d %s, %d failed (ms since exec)\n", r.VMM, guestName(r), r.Boots, r.UnitName(), r.Failures)
	_, tail := stats.Tail(minCount(r))
	_, floorTail := stats.Tail(minCount(r, floor))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "stage\tcount\tp50\tp90\t")
	if tail == "p99" {
		fmt.Fprint(tw, "p99\t")
	}
	fmt.Fprint(tw, "max\t")
	if floor != nil {
		fmt.Fprintf(tw, "floor p50\tp50 ×floor\tfloor %s\t%s ×floor\t", floorTail, floorTail)
	}
	fmt.Fprintln(tw, "user exits\tkvm exits\t")
	for _, s := range r.Rows() {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t", s.Stage, s.Count, FormatMS(s.P50US, s.Count), FormatMS(s.P90US, s.Count))
		if tail == "p99" {
			fmt.Fprintf(tw, "%s\t", FormatMS(tailOf(s, "p99"), s.Count))
		}
		fmt.Fprintf(tw, "%s\t", FormatMS(s.MaxUS, s.Count))
		if floor != nil {
			fs := floor.Stage(s.Stage)
			if fs == nil || fs.Count == 0 {
				fmt.Fprint(tw, "-\t-\t-\t-\t")
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t", FormatMS(fs.P50US, fs.Count), Ratio(fs.P50US, s.P50US, fs.Count, s.Count),
					FormatMS(tailOf(fs, floorTail), fs.Count), Ratio(tailOf(fs, floorTail), tailOf(s, floorTail), fs.Count, s.Count))
			}
		}
		user := "-"
		if s.Count > 0 {
			user = fmt.Sprintf("%.1f", s.UserExits)
		}
		fmt.Fprintf(tw, "%s\t%s\t\n", user, kvmExits(r, s))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if tail == "max" && minCount(r) > 0 {
		fmt.Fprintf(w, "(%d %s: no p99, which below %d is the maximum)\n", minCount(r), r.UnitName(), stats.TailMinSamples)
	}
	if floor != nil {
		fmt.Fprintf(w, "×floor: this run's figure over the floor's, %s (%d %s, %d failed), measured interleaved in the same session\n",
			floor.VMM, floor.Boots, floor.UnitName(), floor.Failures)
	}
	if !r.KVMExitsMeasured() {
		fmt.Fprintf(w, "kvm exits n/a: %s\n", r.KVMExitsNote())
	}
	return nil
}

func guestName(r *results.Run) string {
	if r.Guest == "" {
		return "none"
	}
	return r.Guest
}

// Floors maps the name of a run to the floor run its ratios are taken to.
type Floors map[string]*results.Run

// WriteCompare prints runs side by side, p50 and the tail per stage of
// rows, each run's ratio to the first one, and, for runs that have a floor
// in floors, their p50 distance to it.
func WriteCompare(w io.Writer, rows []string, runs []*results.Run, floors Floors) error {
	if len(runs) < 2 {
		return fmt.Errorf("compare: need two runs, have %d", len(runs))
	}
	_, tail := stats.Tail(minCount(runs...))
	var head []string
	for _, r := range runs {
		head = append(head, fmt.Sprintf("%s %d/%d ok", r.VMM, r.Boots-r.Failures, r.Boots))
	}
	fmt.Fprintf(w, "guest %s; ms since exec; ratio = run / %s (>1: slower)", guestName(runs[0]), runs[0].VMM)
	if tail == "max" {
		fmt.Fprintf(w, "; tail = max (fewer than %d boots)", stats.TailMinSamples)
	}
	fmt.Fprintf(w, "\nruns: %s\n", strings.Join(head, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "stage\t")
	for _, q := range []string{"p50", tail} {
		for _, r := range runs {
			fmt.Fprintf(tw, "%s %s\t", r.VMM, q)
		}
		for _, r := range runs[1:] {
			fmt.Fprintf(tw, "%s %s ratio\t", r.VMM, q)
		}
	}
	for _, r := range runs {
		if floors[r.VMM] != nil {
			fmt.Fprintf(tw, "%s p50 ×floor\t", r.VMM)
		}
	}
	fmt.Fprintln(tw)
	base := runs[0]
	for _, name := range rows {
		fmt.Fprintf(tw, "%s\t", name)
		bs := base.Stage(name)
		for _, pick := range []func(*results.StageResult) float64{
			func(x *results.StageResult) float64 { return x.P50US },
			func(x *results.StageResult) float64 { return tailOf(x, tail) },
		} {
			for _, r := range runs {
				st := r.Stage(name)
				if st == nil {
					fmt.Fprint(tw, "-\t")
					continue
				}
				fmt.Fprintf(tw, "%s\t", FormatMS(pick(st), st.Count))
			}
			for _, r := range runs[1:] {
				st := r.Stage(name)
				if st == nil || bs == nil {
					fmt.Fprint(tw, "-\t")
					continue
				}
				fmt.Fprintf(tw, "%s\t", Ratio(pick(bs), pick(st), bs.Count, st.Count))
			}
		}
		for _, r := range runs {
			f := floors[r.VMM]
			if f == nil {
				continue
			}
			st, fs := r.Stage(name), f.Stage(name)
			if st == nil || fs == nil {
				fmt.Fprint(tw, "-\t")
				continue
			}
			fmt.Fprintf(tw, "%s\t", Ratio(fs.P50US, st.P50US, fs.Count, st.Count))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// WriteFloors prints the floor runs of a session side by side: per stage,
// each floor's p50 and tail. The exec floors have only their exit row.
func WriteFloors(w io.Writer, floors ...*results.Run) error {
	var rows []string
	seen := map[string]bool{}
	for _, f := range floors {
		for _, s := range f.Rows() {
			if !seen[s.Stage] {
				seen[s.Stage] = true
				rows = append(rows, s.Stage)
			}
		}
	}
	_, tail := stats.Tail(minCount(floors...))
	var head []string
	for _, f := range floors {
		head = append(head, fmt.Sprintf("%s %d/%d ok", f.VMM, f.Boots-f.Failures, f.Boots))
	}
	fmt.Fprintf(w, "this machine's floor, ms since exec: %s\n", strings.Join(head, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "stage\t")
	for _, f := range floors {
		fmt.Fprintf(tw, "%s p50\t%s %s\t", f.VMM, f.VMM, tail)
	}
	fmt.Fprintln(tw)
	for _, name := range rows {
		fmt.Fprintf(tw, "%s\t", name)
		for _, f := range floors {
			s := f.Stage(name)
			if s == nil {
				fmt.Fprint(tw, "\t\t")
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t", FormatMS(s.P50US, s.Count), FormatMS(tailOf(s, tail), s.Count))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// WriteByStage prints runs stage by stage, one line per run: count,
// p50, p90 and max, and each run's ratio to the first at each of them.
// A run without the stage shows "-". For a few runs whose rows differ
// (jailed and unjailed, two VMM binaries) where a wide table would not
// fit.
func WriteByStage(w io.Writer, rows []string, runs []*results.Run) error {
	if len(runs) < 2 {
		return fmt.Errorf("by stage: need two runs, have %d", len(runs))
	}
	var head []string
	for _, r := range runs {
		head = append(head, fmt.Sprintf("%s %d/%d ok", r.VMM, r.Boots-r.Failures, r.Boots))
	}
	fmt.Fprintf(w, "runs: %s\n", strings.Join(head, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "stage (ms)\trun\tcount\tp50\tp90\tmax\tp50 ratio\tp90 ratio\tmax ratio\t\n")
	base := runs[0]
	picks := []func(*results.StageResult) float64{
		func(x *results.StageResult) float64 { return x.P50US },
		func(x *results.StageResult) float64 { return x.P90US },
		func(x *results.StageResult) float64 { return x.MaxUS },
	}
	for _, name := range rows {
		bs := base.Stage(name)
		for i, r := range runs {
			label := ""
			if i == 0 {
				label = name
			}
			st := r.Stage(name)
			if st == nil {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t\n", label, r.VMM)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t", label, r.VMM, st.Count)
			for _, p := range picks {
				fmt.Fprintf(tw, "%s\t", FormatMS(p(st), st.Count))
			}
			for _, p := range picks {
				if i == 0 || bs == nil {
					fmt.Fprint(tw, "-\t")
					continue
				}
				fmt.Fprintf(tw, "%s\t", Ratio(p(bs), p(st), bs.Count, st.Count))
			}
			fmt.Fprintln(tw)
		}
	}
	return tw.Flush()
}
