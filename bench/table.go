package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// ms formats microseconds as milliseconds; "-" when the stage never
// happened.
func ms(us float64, count int64) string {
	if count == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", us/1000)
}

// WriteTable prints one run: a row per stage, times in ms from the exec of
// the VMM, and the mean exits to user space during the stage.
func WriteTable(w io.Writer, r *Run) error {
	unit := r.Unit
	if unit == "" {
		unit = "boots"
	}
	fmt.Fprintf(w, "%s, guest %s: %d %s, %d failed (ms since exec of the VMM)\n", r.VMM, r.Guest, r.Boots, unit, r.Failures)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tcount\tp50\tp90\tp99\tmax\tuser exits\tkvm exits\t")
	for _, s := range r.Stages {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t\n", s.Stage, s.Count,
			ms(s.P50US, s.Count), ms(s.P90US, s.Count), ms(s.P99US, s.Count), ms(s.MaxUS, s.Count), s.UserExits, s.KVMExits)
	}
	return tw.Flush()
}

func ratio(a, b float64, ca, cb int64) string {
	if ca == 0 || cb == 0 || a <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", b/a)
}

// WriteCompare prints runs side by side, p50 and p99 per stage of Stages,
// with each run's ratio to the first one.
func WriteCompare(w io.Writer, runs ...*Run) error {
	return WriteCompareRows(w, StageNames(), runs...)
}

// WriteCompareRows is WriteCompare with the given rows, e.g.
// RestoreStageNames().
func WriteCompareRows(w io.Writer, rows []string, runs ...*Run) error {
	if len(runs) < 2 {
		return fmt.Errorf("compare: need two runs, have %d", len(runs))
	}
	var head []string
	for _, r := range runs {
		head = append(head, fmt.Sprintf("%s %d/%d ok", r.VMM, r.Boots-r.Failures, r.Boots))
	}
	fmt.Fprintf(w, "guest %s; ms since exec of the VMM; ratio = %s / %s (>1: slower)\n", runs[0].Guest, runs[1].VMM, runs[0].VMM)
	fmt.Fprintf(w, "runs: %s\n", strings.Join(head, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "stage\t")
	for _, q := range []string{"p50", "p99"} {
		for _, r := range runs {
			fmt.Fprintf(tw, "%s %s\t", r.VMM, q)
		}
		for _, r := range runs[1:] {
			fmt.Fprintf(tw, "%s ratio\t", q)
			_ = r
		}
	}
	fmt.Fprintln(tw)
	base := runs[0]
	for _, name := range rows {
		fmt.Fprintf(tw, "%s\t", name)
		bs := base.Stage(name)
		for _, pick := range []func(*StageResult) float64{
			func(x *StageResult) float64 { return x.P50US },
			func(x *StageResult) float64 { return x.P99US },
		} {
			for _, r := range runs {
				st := r.Stage(name)
				if st == nil {
					fmt.Fprint(tw, "-\t")
					continue
				}
				fmt.Fprintf(tw, "%s\t", ms(pick(st), st.Count))
			}
			for _, r := range runs[1:] {
				st := r.Stage(name)
				if st == nil || bs == nil {
					fmt.Fprint(tw, "-\t")
					continue
				}
				fmt.Fprintf(tw, "%s\t", ratio(pick(bs), pick(st), bs.Count, st.Count))
			}
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
