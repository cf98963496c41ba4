package bench

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/stats"
)

// What a restore run asks the probe, at once after the exec: the restored
// UART queues it and the probe answers as soon as its vCPU runs.
const (
	RestoreAsk    = "echo restored"
	RestoreAnswer = "restored"
)

// Arm names of a restore session. A restore from a CAS store is named by
// its chunk size: "restore-cas-2M".
const (
	ArmRestore   = "restore" // from the memory file
	ArmColdBoot  = "cold-boot"
	armCASPrefix = "restore-cas-"
)

// Where a restore session's restores take their memory from (--from).
const (
	FromFile = "file" // the snapshot's memory file, mapped MAP_PRIVATE
	FromCAS  = "cas"  // a CAS manifest, each chunk mapped MAP_PRIVATE|MAP_FIXED
	FromBoth = "both" // both, interleaved
)

// ParseFrom reads --from.
func ParseFrom(s string) (file, cas bool, err error) {
	switch s {
	case FromFile:
		return true, false, nil
	case FromCAS:
		return false, true, nil
	case FromBoth:
		return true, true, nil
	}
	return false, false, fmt.Errorf("%q: want %s, %s or %s", s, FromFile, FromCAS, FromBoth)
}

// RestoreTarget is one way of restoring the same snapshot: from its memory
// file, or from a CAS store at one chunk size.
type RestoreTarget struct {
	Name string
	Dir  string       // for --restore
	CAS  *CASSnapshot // nil: the memory file
}

// FileTarget restores snap from its memory file.
func FileTarget(snap *Snapshot) RestoreTarget { return RestoreTarget{Name: ArmRestore, Dir: snap.Dir} }

// CASTarget restores from the CAS snapshot c.
func CASTarget(c *CASSnapshot) RestoreTarget {
	return RestoreTarget{Name: armCASPrefix + c.ChunkName(), Dir: c.Dir, CAS: c}
}

// RestoreConfig is how to restore snap from its memory file under the
// volt-vmm of boot, driven by RestoreAsk and timed by RestoreStages.
func RestoreConfig(boot Config, snap *Snapshot) Config {
	return RestoreTargetConfig(boot, snap, FileTarget(snap))
}

// RestoreTargetConfig is RestoreConfig for any target.
func RestoreTargetConfig(boot Config, snap *Snapshot, t RestoreTarget) Config {
	c := Config{
		VMM: VMMVolt, VMMBin: boot.VMMBin, Guest: GuestProbe, RestoreDir: t.Dir,
		Memory: snap.Memory, CPUs: snap.CPUs, Timeout: boot.Timeout,
		Ask: RestoreAsk, Answer: RestoreAnswer, Rows: RestoreStages,
	}
	if t.CAS != nil {
		c.ExtraArgs = t.CAS.RestoreArgs()
	}
	return c
}

// RestoreArms returns the arms of a restore session: restores of snap from
// each target, and, with compareBoot, cold boots of the same probe (boot's
// Kernel, Memory, CPUs) driven the same way, first, as the base of the
// ratios. All are timed by RestoreStages. With floorDir, each gets its
// floor, interleaved before it: floor-kvm for the cold boot (its guest
// answers after its markers, as the cold-booted probe does),
// floor-kvm-answer for the restores (one byte, no markers, as a restored
// probe answers).
func RestoreArms(boot Config, snap *Snapshot, targets []RestoreTarget, compareBoot bool, floorDir string) ([]Arm, error) {
	if len(targets) == 0 {
		return nil, errors.New("restore: nothing to restore from")
	}
	var arms []Arm
	if compareBoot {
		cold := boot
		cold.Guest, cold.Ask, cold.Answer, cold.Rows = GuestProbe, RestoreAsk, RestoreAnswer, RestoreStages
		coldArm := Arm{Name: ArmColdBoot, Config: cold}
		if floorDir != "" {
			f, err := KVMFloorArm(floorDir, boot.Memory, RestoreStages, boot.Timeout)
			if err != nil {
				return nil, err
			}
			coldArm.Floor = f.Name
			arms = append(arms, f)
		}
		arms = append(arms, coldArm)
	}
	floor := ""
	if floorDir != "" {
		f, err := KVMAnswerFloorArm(floorDir, snap.Memory, boot.Timeout)
		if err != nil {
			return nil, err
		}
		floor = f.Name
		arms = append(arms, f)
	}
	for _, t := range targets {
		arms = append(arms, Arm{Name: t.Name, Config: RestoreTargetConfig(boot, snap, t), Floor: floor})
	}
	return arms, nil
}

// WithKVMFloor puts a floor-kvm arm, timed by rows, before arms and makes
// it the floor of each of them: boots of any VMM are judged against the
// same floor, measured interleaved with them.
func WithKVMFloor(arms []Arm, floorDir, memory string, rows []Stage, timeout time.Duration) ([]Arm, error) {
	f, err := KVMFloorArm(floorDir, memory, rows, timeout)
	if err != nil {
		return nil, err
	}
	out := []Arm{f}
	for _, a := range arms {
		a.Floor = f.Name
		out = append(out, a)
	}
	return out, nil
}

// Span is the time between two rows of the same boot: the tables give
// each row from the exec, spans isolate what lies between.
type Span struct {
	Name, From, To string
}

// RestoreSpans split a restore where the question is "where does the time
// go": process and Go runtime start-up, the load proper (what
// Firecracker's snapshot-load figure covers, roughly), and the guest.
var RestoreSpans = []Span{
	{"exec → vmm-ready (process start)", "", "vmm-ready"},
	{"vmm-ready → guest-entry (load)", "vmm-ready", "guest-entry"},
	{"memory → guest-entry (vCPU and device state)", "memory", "guest-entry"},
	{"guest-entry → first-answer (guest)", "guest-entry", "first-answer"},
}

// SpanRecorder collects spans per arm; use its Observe as (part of) a
// Plan's Observe.
type SpanRecorder struct {
	Spans []Span
	mu    sync.Mutex
	us    map[string][][]float64 // arm → span index → samples (µs)
}

// Observe records the spans of one successful boot.
func (s *SpanRecorder) Observe(a Arm, b Boot) {
	if b.Err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.us == nil {
		s.us = map[string][][]float64{}
	}
	if s.us[a.Name] == nil {
		s.us[a.Name] = make([][]float64, len(s.Spans))
	}
	for i, sp := range s.Spans {
		to, ok := b.Stages[sp.To]
		if !ok {
			continue
		}
		from := StageTime{}
		if sp.From != "" {
			if from, ok = b.Stages[sp.From]; !ok {
				continue
			}
		}
		s.us[a.Name][i] = append(s.us[a.Name][i], float64((to.At-from.At).Nanoseconds())/1e3)
	}
}

// Write prints p50/p90/max of every span for the named arms, and p99
// where every arm has stats.TailMinSamples samples of every span.
func (s *SpanRecorder) Write(w io.Writer, arms ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fewest := -1
	for _, a := range arms {
		for i := range s.Spans {
			n := 0
			if s.us[a] != nil {
				n = len(s.us[a][i])
			}
			if fewest < 0 || n < fewest {
				fewest = n
			}
		}
	}
	qs, names := []float64{0.5, 0.9, 1}, []string{"p50", "p90", "max"}
	if _, tail := stats.Tail(fewest); tail == "p99" {
		qs, names = []float64{0.5, 0.9, 0.99, 1}, []string{"p50", "p90", "p99", "max"}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "span (ms)\t")
	for _, a := range arms {
		for _, n := range names {
			fmt.Fprintf(tw, "%s %s\t", a, n)
		}
	}
	fmt.Fprintln(tw)
	for i, sp := range s.Spans {
		fmt.Fprintf(tw, "%s\t", sp.Name)
		for _, a := range arms {
			var xs []float64
			if s.us[a] != nil {
				xs = s.us[a][i]
			}
			for _, q := range qs {
				fmt.Fprintf(tw, "%s\t", report.FormatMS(stats.Quantile(xs, q), int64(len(xs))))
			}
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
