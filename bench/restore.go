package bench

import (
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
)

// What a restore run asks the probe, at once after the exec: the restored
// UART queues it and the probe answers as soon as its vCPU runs.
const (
	RestoreAsk    = "echo restored"
	RestoreAnswer = "restored"
)

// Arm names of a restore session.
const (
	ArmRestore  = "restore"
	ArmColdBoot = "cold-boot"
)

// RestoreArms returns the arms of a restore session: restores of snap and,
// with compareBoot, cold boots of the same probe (boot's Kernel, Memory,
// CPUs) driven the same way, first, as the base of the ratios. Both are
// timed by RestoreStages.
func RestoreArms(boot Config, snap *Snapshot, compareBoot bool) []Arm {
	restore := Config{
		VMM: VMMVolt, VMMBin: boot.VMMBin, Guest: GuestProbe, RestoreDir: snap.Dir,
		Memory: snap.Memory, CPUs: snap.CPUs, Timeout: boot.Timeout,
		Ask: RestoreAsk, Answer: RestoreAnswer, Rows: RestoreStages,
	}
	arms := []Arm{{Name: ArmRestore, Config: restore}}
	if compareBoot {
		cold := boot
		cold.Guest, cold.Ask, cold.Answer, cold.Rows = GuestProbe, RestoreAsk, RestoreAnswer, RestoreStages
		arms = append([]Arm{{Name: ArmColdBoot, Config: cold}}, arms...)
	}
	return arms
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

// Write prints p50/p90/p99/max of every span for the named arms.
func (s *SpanRecorder) Write(w io.Writer, arms ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "span (ms)\t")
	for _, a := range arms {
		fmt.Fprintf(tw, "%s p50\t%s p90\t%s p99\t%s max\t", a, a, a, a)
	}
	fmt.Fprintln(tw)
	for i, sp := range s.Spans {
		fmt.Fprintf(tw, "%s\t", sp.Name)
		for _, a := range arms {
			var xs []float64
			if s.us[a] != nil {
				xs = s.us[a][i]
			}
			for _, q := range []float64{0.5, 0.9, 0.99, 1} {
				fmt.Fprintf(tw, "%s\t", ms(Quantile(xs, q), int64(len(xs))))
			}
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
