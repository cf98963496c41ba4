package vmm

import (
	"fmt"
	"io"
	"time"

	"github.com/voltvmm/volt/guest/marker"
)

// Stage is one row of the boot timeline: a named point and its offset from
// the timeline's origin (the VMM's exec, as closely as the process can see
// it).
type Stage struct {
	Name string
	At   time.Duration
}

// BootStages returns the VMM-side stages followed by the first occurrence of
// every guest boot marker, in the order they happened.
func (v *VM) BootStages() []Stage {
	tl, firstOutput := v.Timeline()
	var out []Stage
	add := func(name string, t time.Time) {
		if !t.IsZero() {
			out = append(out, Stage{Name: name, At: t.Sub(tl.Origin)})
		}
	}
	add("vm-created", tl.VMCreated)
	add("memory-ready", tl.MemoryReady)
	add("kernel-loaded", tl.KernelReady)
	add("state-restored", tl.StateRestored)
	add("guest-entry", tl.GuestEntry)
	add("first-output", firstOutput)
	seen := map[marker.Stage]bool{}
	for _, e := range v.markers.Events() {
		if seen[e.Stage] {
			continue
		}
		seen[e.Stage] = true
		add(e.Stage.String(), e.At)
	}
	sortStages(out)
	return out
}

func sortStages(s []Stage) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].At < s[j-1].At; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// WriteBootTimer prints the timeline as "boot-timer: exec→STAGE N µs" lines.
func WriteBootTimer(w io.Writer, stages []Stage) {
	for _, s := range stages {
		fmt.Fprintf(w, "boot-timer: exec→%s %d µs\n", s.Name, s.At.Microseconds())
	}
}
