package bench

import (
	"cmp"
	"slices"
	"time"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/marker"
)

// Stage is one row of every table: a point of the boot, timed from the exec
// of the VMM.
type Stage struct {
	Name      string // also the Prometheus "stage" label value
	Milestone trace.Milestone
	// Gated stages are the ones the issue names; the others (memory,
	// vCPU, kernel entry) are shown for insight but not gated, since
	// every extra test is another chance of a false alarm.
	Gated bool
}

func markerMilestone(s marker.Stage) trace.Milestone {
	m, _ := trace.Marker(s)
	return m
}

// Stages lists the rows of a boot in the order of the issue: exec → VMM
// ready → guest entry → first console output → PID 1 → ready → exit.
var Stages = []Stage{
	{"vmm-ready", trace.VMCreated, true},
	{"memory", trace.Memory, false},
	{"vcpu", trace.VCPU, false},
	{"guest-entry", trace.GuestEntry, true},
	{"kernel-entry", markerMilestone(marker.KernelEntry), false},
	{"first-output", trace.FirstOutput, true},
	{"pid1", markerMilestone(marker.PID1), true},
	{"ready", markerMilestone(marker.Ready), true},
	{"exit", trace.Exit, true},
}

// RestoreStages are the rows of a restore, and of the cold boot it is
// compared with: a restored guest has booted already, so it writes no
// boot markers, and "first-answer" (its reply to a command queued before
// the exec) is when it is usable again. Firecracker's snapshot-load bar
// covers roughly vmm-ready to guest-entry; the rows before it add the
// process and Go runtime start-up.
var RestoreStages = []Stage{
	{"vmm-ready", trace.VMCreated, true},
	{"memory", trace.Memory, true}, // the memory file is mapped and registered
	{"vcpu", trace.VCPU, false},
	{"guest-entry", trace.GuestEntry, true},
	{"first-answer", trace.Answer, true},
	{"exit", trace.Exit, true},
}

// ExecStages is the one row of a process that only starts and exits: the
// exec floors.
var ExecStages = []Stage{{"exit", trace.Exit, false}}

// StageNames returns the names of Stages in order.
func StageNames() []string { return stageNames(Stages) }

// RestoreStageNames returns the names of RestoreStages in order.
func RestoreStageNames() []string { return stageNames(RestoreStages) }

// GatedStageNames returns the boot rows the CI gate judges.
func GatedStageNames() []string {
	var names []string
	for _, s := range Stages {
		if s.Gated {
			names = append(names, s.Name)
		}
	}
	return names
}

func stageNames(stages []Stage) []string {
	names := make([]string, len(stages))
	for i, s := range stages {
		names[i] = s.Name
	}
	return names
}

// StageTime is one stage of one boot (see results.StageTime).
type StageTime = results.StageTime

// stageTimes picks the rows of Stages out of a trace record.
func stageTimes(rec trace.Record) map[string]StageTime { return stageTimesFor(rec, Stages) }

// stageTimesFor picks the given rows out of a trace record. Exits are
// summed over the record's points so that stages which are not rows
// (kernel markers other than entry, shutdown) still count towards the row
// that follows.
func stageTimesFor(rec trace.Record, stages []Stage) map[string]StageTime {
	type cum struct {
		at        time.Duration
		kvm, user uint64
		name      string
	}
	byMilestone := map[trace.Milestone]string{}
	for _, s := range stages {
		byMilestone[s.Milestone] = s.Name
	}
	var rows []cum
	var kvm, user uint64
	for _, p := range rec.Points {
		kvm += uint64(p.KVMExits)
		user += uint64(p.UserExits)
		if name, ok := byMilestone[p.Milestone]; ok {
			rows = append(rows, cum{p.At, kvm, user, name})
		}
	}
	slices.SortStableFunc(rows, func(a, b cum) int { return cmp.Compare(a.at, b.at) })
	out := make(map[string]StageTime, len(rows))
	var prevKVM, prevUser uint64
	for _, r := range rows {
		out[r.name] = StageTime{At: r.at, KVMExits: uint32(r.kvm - prevKVM), UserExits: uint32(r.user - prevUser)}
		prevKVM, prevUser = r.kvm, r.user
	}
	return out
}
