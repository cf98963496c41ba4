package bench

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/marker"
)

// The floor helpers reach every row their arms are timed by, through the
// same eBPF program as a VMM: one memory slot, one vCPU, the markers in
// the probe's order.
func TestFloorHelpersReachEveryRow(t *testing.T) {
	r := requireRunner(t)
	dir := floorFixture(t)
	arms, err := ExecFloorArms(dir, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	kvm, err := KVMFloorArm(dir, "128M", Stages, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	answer, err := KVMAnswerFloorArm(dir, "128M", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	arms = append(arms, kvm, answer)
	const n = 3
	observe := func(a Arm, b Boot) {
		if b.Err != nil {
			t.Errorf("%s: %v", a.Name, b.Err)
			return
		}
		switch a.Name {
		case FloorKVM, FloorKVMAnswer:
			if b.Record.MemoryRegions != 1 || b.Record.VCPUs != 1 {
				t.Errorf("%s: %d memory regions, %d vCPUs; want one of each", a.Name, b.Record.MemoryRegions, b.Record.VCPUs)
			}
		}
		want := map[string]uint32{FloorKVM: 3, FloorKVMAnswer: 0, FloorExecGo: 0, FloorExecC: 0}[a.Name]
		if b.Record.MarkerWrites != want {
			t.Errorf("%s: %d marker writes, want %d", a.Name, b.Record.MarkerWrites, want)
		}
		if a.Name == FloorKVM {
			// The guest's own order: entry, pid1, output, ready.
			ke, p1, fo, rd := b.Stages["kernel-entry"].At, b.Stages["pid1"].At, b.Stages["first-output"].At, b.Stages["ready"].At
			if !(b.Stages["guest-entry"].At <= ke && ke <= p1 && p1 <= fo && fo <= rd && rd <= b.Stages["exit"].At) {
				t.Errorf("floor-kvm rows out of order: %+v", b.Stages)
			}
		}
	}
	runs, err := r.RunPlan(context.Background(), Plan{Arms: arms, N: n, Observe: observe})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	report.WriteFloors(&buf, runs...)
	t.Logf("\n%s", buf.String())
	for _, run := range runs {
		if !run.Floor || run.Failures != 0 {
			t.Errorf("%s: floor %v, %d failures", run.VMM, run.Floor, run.Failures)
		}
		for _, s := range run.Stages {
			if s.Count != n {
				t.Errorf("%s: %s seen %d times of %d", run.VMM, s.Stage, s.Count, n)
			}
		}
	}
}

// A helper that fails is a failed run with its status, never a fast floor.
func TestAFailingFloorHelperFails(t *testing.T) {
	r := requireRunner(t)
	kvm, err := KVMFloorArm(floorFixture(t), "128M", Stages, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	kvm.Config.ExtraArgs = []string{"no-such-shape"}
	b := r.Boot(context.Background(), kvm.Config)
	if !errors.Is(b.Err, ErrExitStatus) || !strings.Contains(b.Err.Error(), "status 2") || b.Stages != nil {
		t.Errorf("floor-kvm with a bad argument: %v, stages %v", b.Err, b.Stages)
	}
}

// A VMM that exits non-zero fails the boot, with its status; a row the
// guest never reaches fails it too, by name.
func TestBootFailsOnAFailureStatusOrAMissingRow(t *testing.T) {
	r := requireRunner(t)
	cfg := voltConfig(t)
	notAKernel := cfg
	notAKernel.Kernel = "/etc/hostname"
	b := r.Boot(context.Background(), notAKernel)
	if !errors.Is(b.Err, ErrExitStatus) || !strings.Contains(b.Err.Error(), "status") {
		t.Errorf("volt-vmm refusing its kernel: %v", b.Err)
	}
	workload, _ := trace.Marker(marker.Workload)
	more := cfg
	more.Rows = append(append([]Stage{}, Stages...), Stage{Name: "workload", Milestone: workload})
	b = r.Boot(context.Background(), more)
	if !errors.Is(b.Err, ErrMissingStage) || !strings.Contains(b.Err.Error(), "workload") || b.Stages != nil {
		t.Errorf("a row the probe never reaches: %v, stages %v", b.Err, b.Stages)
	}
	// The same boot without that row is a success: the failure above was
	// the missing row, not the boot.
	if b := r.Boot(context.Background(), cfg); b.Err != nil {
		t.Errorf("clean boot: %v", b.Err)
	}
}
