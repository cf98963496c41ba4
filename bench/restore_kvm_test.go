package bench

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/report"
)

// requireKVM skips where there is no KVM or the test is short; clones need
// no eBPF.
func requireKVM(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs guests; skipped in -short mode")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
}

func prepareTestSnapshot(t *testing.T, touch int) *Snapshot {
	t.Helper()
	vmmBin, elf := probeFixture(t)
	snap, err := PrepareSnapshot(context.Background(), SnapshotSpec{
		VMMBin: vmmBin, Kernel: elf, Memory: "128M", CPUs: 1, TouchPages: touch,
		Dir: t.TempDir(), Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if touch > 0 && snap.TouchSum == "" {
		t.Fatal("touched pages but no checksum")
	}
	// The guest's 128 MiB, and whatever header the snapshot format puts
	// beside them (a page, today), but not a second copy.
	if snap.MemFileBytes < 128<<20 || snap.MemFileBytes > 129<<20 {
		t.Errorf("memory file is %d bytes, want the guest's 128 MiB (and at most 1 MiB more)", snap.MemFileBytes)
	}
	return snap
}

func TestRestoreRunTimesEveryStageInOrder(t *testing.T) {
	r := requireRunner(t)
	snap := prepareTestSnapshot(t, 100)
	const n = 5
	arms, err := RestoreArms(voltConfig(t), snap, true, floorFixture(t))
	if err != nil {
		t.Fatal(err)
	}
	spans := &SpanRecorder{Spans: RestoreSpans}
	observe := func(a Arm, b Boot) {
		spans.Observe(a, b)
		if b.Err != nil {
			t.Errorf("%s: %v", a.Name, b.Err)
			return
		}
		if a.Config.VMM == VMMFloor {
			return
		}
		var last time.Duration
		for _, s := range RestoreStages {
			st, ok := b.Stages[s.Name]
			if !ok {
				t.Errorf("%s: no %s; record %+v", a.Name, s.Name, b.Record.Points)
				continue
			}
			if st.At <= 0 || st.At < last {
				t.Errorf("%s: %s at %v, after %v before it", a.Name, s.Name, st.At, last)
			}
			last = st.At
		}
		if a.Name == ArmRestore && b.Record.MarkerWrites != 1 {
			// Only the poweroff marker: a restore must not boot again.
			t.Errorf("restore wrote %d boot markers, want 1 (poweroff)", b.Record.MarkerWrites)
		}
	}
	runs, err := r.RunPlan(context.Background(), Plan{Arms: arms, N: n, Observe: observe})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	floors := Floors(arms, runs)
	for _, run := range runs {
		report.WriteTable(&buf, run, floors[run.VMM])
	}
	spans.Write(&buf, ArmColdBoot, ArmRestore)
	t.Logf("\n%s", buf.String())
	if got := []string{runs[0].VMM, runs[1].VMM, runs[2].VMM, runs[3].VMM}; strings.Join(got, " ") != "floor-kvm cold-boot floor-kvm-answer restore" {
		t.Fatalf("arms %v: want each floor interleaved before its arm", got)
	}
	if floors[ArmRestore] != runs[2] || floors[ArmColdBoot] != runs[0] {
		t.Errorf("floors %v", floors)
	}
	for _, run := range runs {
		for _, s := range RestoreStages {
			if st := run.Stage(s.Name); st == nil || st.Count != n || st.P50US <= 0 {
				t.Errorf("%s: stage %s: %+v", run.VMM, s.Name, st)
			}
		}
	}
	if runs[3].Unit != "restores" || !runs[2].Floor || runs[2].Unit != "runs" {
		t.Errorf("units: restore %q, floor %q (floor %v)", runs[3].Unit, runs[2].Unit, runs[2].Floor)
	}
	// A floor is a floor: the helper sets up less than volt-vmm, so every
	// row of its run comes earlier (medians; both measured interleaved).
	for _, pair := range [][2]int{{0, 1}, {2, 3}} {
		for _, s := range RestoreStageNames() {
			f, v := runs[pair[0]].Stage(s), runs[pair[1]].Stage(s)
			if f.P50US >= v.P50US {
				t.Errorf("%s: floor %s p50 %.0f µs not below %s's %.0f µs", s, runs[pair[0]].VMM, f.P50US, runs[pair[1]].VMM, v.P50US)
			}
		}
	}
}

var genIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestClonesShareTheMemoryFileAndGetDistinctGenerationIDs(t *testing.T) {
	requireKVM(t)
	const touch = 500
	snap := prepareTestSnapshot(t, touch)
	vmmBin, _ := probeFixture(t)
	rep, err := RunClones(context.Background(), CloneSpec{VMMBin: vmmBin, Snapshot: snap, N: 3, ReadBack: true, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	WriteClones(&buf, rep)
	t.Logf("\n%s", buf.String())
	seen := map[string]bool{}
	for i, c := range rep.Clones {
		if !genIDRE.MatchString(c.GenID) || seen[c.GenID] {
			t.Errorf("clone %d: generation ID %q is malformed or repeated", i+1, c.GenID)
		}
		seen[c.GenID] = true
		if c.Sum != snap.TouchSum {
			t.Errorf("clone %d: sum %s, snapshot %s", i+1, c.Sum, snap.TouchSum)
		}
		if c.Total.Rss == 0 || c.Total.Pss == 0 || c.Total.Pss > c.Total.Rss {
			t.Errorf("clone %d: smaps_rollup %+v", i+1, c.Total)
		}
		// Every clone read the touched pages, so at least those are
		// resident from the memory file.
		if c.Guest.Rss < touch*4 {
			t.Errorf("clone %d: memory file Rss %d kB, read back %d kB", i+1, c.Guest.Rss, touch*4)
		}
	}
	// The page cache is shared: three clones mapping the same pages pay
	// for them about once.
	_, guest := rep.Sum()
	if guest.Pss*2 > guest.Rss {
		t.Errorf("memory file: sum of Pss %d kB is not well under sum of Rss %d kB: pages not shared", guest.Pss, guest.Rss)
	}
}

// Restores per second: every level runs its share of restores with that
// many in flight, each timed by the eBPF rows, beside the floor's batches.
func TestThroughputRunsEveryLevelBesideItsFloor(t *testing.T) {
	r := requireRunner(t)
	snap := prepareTestSnapshot(t, 0)
	floor, err := KVMAnswerFloorArm(floorFixture(t), snap.Memory, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	levels, err := r.RunThroughput(context.Background(), ThroughputSpec{
		Config: RestoreConfig(voltConfig(t), snap), Levels: []int{1, 3}, N: 6, Rounds: 2, Floor: &floor.Config,
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	WriteThroughput(&buf, levels)
	t.Logf("\n%s", buf.String())
	for _, l := range levels {
		if l.Restores != 6 || l.Failures != 0 || l.Floor == nil || l.Floor.Restores != 6 || l.Floor.Failures != 0 {
			t.Errorf("×%d: %d restores, %d failed; floor %+v; first error %v", l.Concurrency, l.Restores, l.Failures, l.Floor, l.FirstErr)
			continue
		}
		if st := l.Run.Stage("first-answer"); st == nil || st.Count != 6 {
			t.Errorf("×%d: first-answer %+v", l.Concurrency, st)
		}
		if l.PerSecond() <= 0 || l.Floor.PerSecond() <= 0 {
			t.Errorf("×%d: %v restores/s, floor %v/s", l.Concurrency, l.PerSecond(), l.Floor.PerSecond())
		}
	}
	if !strings.Contains(buf.String(), "of floor") || !strings.Contains(buf.String(), ThroughputGoal) {
		t.Errorf("table lacks the floor or the goal:\n%s", buf.String())
	}
}
