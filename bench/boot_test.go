package bench

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/marker"
)

func TestStageTimesFromARecord(t *testing.T) {
	pid1, _ := trace.Marker(marker.PID1)
	long, _ := trace.Marker(marker.KernelLongMode)
	rec := trace.Record{Points: []trace.Point{
		{Milestone: trace.Exec},
		{Milestone: trace.VMCreated, At: 2 * time.Millisecond},
		{Milestone: trace.GuestEntry, At: 3 * time.Millisecond},
		{Milestone: long, At: 4 * time.Millisecond, UserExits: 2},
		{Milestone: pid1, At: 5 * time.Millisecond, UserExits: 1},
		{Milestone: trace.FirstOutput, At: 6 * time.Millisecond, UserExits: 10},
		{Milestone: trace.Exit, At: 9 * time.Millisecond, UserExits: 7},
	}}
	st := stageTimes(rec)
	if got := st["pid1"]; got.At != 5*time.Millisecond || got.UserExits != 3 {
		t.Errorf("pid1 = %+v, want 5 ms and 3 exits (long mode's 2 count towards it)", got)
	}
	if got := st["first-output"]; got.UserExits != 10 {
		t.Errorf("first-output = %+v", got)
	}
	if _, ok := st["ready"]; ok {
		t.Error("ready reported but never reached")
	}
}

// record builds a trace record holding the given milestones, 1 ms apart.
func record(ms ...trace.Milestone) trace.Record {
	rec := trace.Record{Points: []trace.Point{{Milestone: trace.Exec}}}
	for i, m := range ms {
		rec.Points = append(rec.Points, trace.Point{Milestone: m, At: time.Duration(i+1) * time.Millisecond})
	}
	return rec
}

func mk(s marker.Stage) trace.Milestone { m, _ := trace.Marker(s); return m }

// A boot succeeds only when its guest powered off cleanly and every row was
// reached; the error says which rule it broke.
func TestCheckRecordFailsBootsThatDidNotBootAndPowerOff(t *testing.T) {
	probe := Config{VMM: VMMVolt, Guest: GuestProbe}
	floor := Config{VMM: VMMFloor, Rows: ExecStages}
	full := []trace.Milestone{trace.VMCreated, trace.Memory, trace.VCPU, trace.GuestEntry, mk(marker.KernelEntry),
		mk(marker.PID1), trace.FirstOutput, mk(marker.Ready), mk(marker.Shutdown), trace.Exit}
	without := func(drop trace.Milestone) []trace.Milestone {
		return slices.DeleteFunc(slices.Clone(full), func(m trace.Milestone) bool { return m == drop })
	}
	for _, c := range []struct {
		name string
		cfg  Config
		rec  trace.Record
		want error
		says string
	}{
		{"clean boot", probe, record(full...), nil, ""},
		{"no shutdown marker: a reset", probe, record(without(mk(marker.Shutdown))...), ErrNoShutdown, "0x6f"},
		{"panic marker", probe, record(append(without(mk(marker.Shutdown)), mk(marker.KernelPanic))...), ErrGuestPanic, "0x5f"},
		{"panic, then shutdown", probe, record(append(full, mk(marker.KernelPanic))...), ErrGuestPanic, "0x5f"},
		{"no ready", probe, record(without(mk(marker.Ready))...), ErrMissingStage, "ready"},
		{"no vcpu, no kernel entry", probe, record(without(trace.VCPU)[:3]...), ErrNoShutdown, "0x6f"},
		{"floor: exit is all it needs", floor, record(trace.Exit), nil, ""},
		{"floor without its exit", floor, record(), ErrMissingStage, "exit"},
	} {
		cfg := c.cfg
		err := checkRecord(cfg, c.rec, stageTimesFor(c.rec, cfg.rows()), "console")
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
			continue
		}
		if err != nil && !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %q does not say %q", c.name, err, c.says)
		}
	}
	// A missing row is named, with what was seen instead.
	err := checkRecord(probe, record(without(trace.FirstOutput)...), stageTimesFor(record(without(trace.FirstOutput)...), Stages), "")
	if !errors.Is(err, ErrMissingStage) || !strings.Contains(err.Error(), "first-output") || !strings.Contains(err.Error(), "pid1") {
		t.Errorf("no first output: %v", err)
	}
}

func TestExitErrorCarriesTheStatus(t *testing.T) {
	waitErr := exec.Command("/bin/sh", "-c", "exit 5").Run()
	err := exitError("volt-vmm", waitErr, record(mk(marker.KernelPanic)), "guest died\n")
	for _, want := range []string{"status 5", "volt-vmm", "0x5f", "guest died"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if !errors.Is(err, ErrExitStatus) {
		t.Errorf("%v does not wrap ErrExitStatus", err)
	}
	killed := exec.Command("/bin/sh", "-c", "kill -9 $$").Run()
	if err := exitError("qemu", killed, trace.Record{}, ""); !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("killed: %v", err)
	}
}

func TestConfigValidateAndArgs(t *testing.T) {
	probe := Config{VMM: VMMVolt, VMMBin: "v", Guest: GuestProbe, Kernel: "k", Memory: "128M", CPUs: 1, Timeout: time.Second}
	withProfile := probe
	withProfile.GuestProfile, withProfile.ExtraArgs = "nested-pvm", []string{"--x"}
	if err := withProfile.Validate(); err != nil {
		t.Fatal(err)
	}
	if a := withProfile.Args(); !slices.Equal(a[len(a)-3:], []string{"--guest-profile", "nested-pvm", "--x"}) {
		t.Errorf("args %q: want the profile passed through, before the extra arguments", a)
	}
	floor := Config{VMM: VMMFloor, VMMBin: "f", ExtraArgs: []string{"boot", "128"}, Rows: Stages, Timeout: time.Second}
	if err := floor.Validate(); err != nil {
		t.Fatal(err)
	}
	if a := floor.Args(); !slices.Equal(a, []string{"boot", "128"}) {
		t.Errorf("floor args %q", a)
	}
	for name, c := range map[string]Config{
		"profile under qemu":  func() Config { c := withProfile; c.VMM = VMMQEMU; return c }(),
		"floor with a kernel": func() Config { c := floor; c.Kernel = "k"; return c }(),
		"floor without rows":  func() Config { c := floor; c.Rows = nil; return c }(),
		"floor with a guest":  func() Config { c := floor; c.Guest = GuestProbe; return c }(),
		"unknown vmm":         func() Config { c := probe; c.VMM = "bochs"; return c }(),
		"no timeout":          func() Config { c := floor; c.Timeout = 0; return c }(),
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestMemoryMiB(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"128M", 128, true}, {"128", 128, true}, {"1G", 1024, true}, {"2g", 2048, true}, {"65536K", 64, true},
		{"128MiB", 128, true}, {"512MB", 512, true},
		{"", 0, false}, {"0", 0, false}, {"1K", 0, false}, {"-1M", 0, false}, {"1.5G", 0, false},
		{"2048G", 0, false}, {"99999999999999999999", 0, false}, {"12X", 0, false},
	} {
		got, err := MemoryMiB(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("MemoryMiB(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestThroughputValidation(t *testing.T) {
	if err := ValidateThroughput([]int{1, 2, 8}, 200, ThroughputRounds); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		levels []int
		n      int
	}{
		"none":      {nil, 200},
		"zero":      {[]int{0}, 200},
		"too many":  {[]int{MaxConcurrency + 1}, 200},
		"twice":     {[]int{2, 2}, 200},
		"too few n": {[]int{1}, ThroughputRounds - 1},
	} {
		if err := ValidateThroughput(c.levels, c.n, ThroughputRounds); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	th := Throughput{Restores: 10, Failures: 2, Wall: 2 * time.Second}
	if th.PerSecond() != 4 {
		t.Errorf("8 successful restores in 2 s: %v/s", th.PerSecond())
	}
}

func TestPlanRefusesAFloorThatIsNotAnArm(t *testing.T) {
	var r Runner
	arm := Arm{Name: "volt", Config: Config{VMM: VMMVolt, VMMBin: "v", Guest: GuestProbe, Kernel: "k", CPUs: 1, Timeout: time.Second}, Floor: "floor-kvm"}
	if _, err := r.RunPlan(t.Context(), Plan{Arms: []Arm{arm}, N: 1}); err == nil || !strings.Contains(err.Error(), "floor-kvm") {
		t.Errorf("plan with a missing floor: %v", err)
	}
	if _, err := r.RunPlan(t.Context(), Plan{Arms: []Arm{{Name: "a", Config: arm.Config}, {Name: "a", Config: arm.Config}}, N: 1}); err == nil {
		t.Error("two arms of one name accepted")
	}
}
