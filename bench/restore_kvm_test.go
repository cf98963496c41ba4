package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
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
	arms, err := RestoreArms(voltConfig(t), snap, []RestoreTarget{FileTarget(snap)}, true, floorFixture(t))
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

// voltCLIFixture is the volt CLI: $VOLT_CLI, or built from this tree.
func voltCLIFixture(t *testing.T) string {
	t.Helper()
	voltOnce.Do(func() {
		if env := os.Getenv("VOLT_CLI"); env != "" {
			voltBin = env
			return
		}
		root, err := RepoRoot()
		if err != nil {
			voltErr = err
			return
		}
		dir, err := os.MkdirTemp("", "voltbench-volt-")
		if err != nil {
			voltErr = err
			return
		}
		fixtureDirs = append(fixtureDirs, dir)
		voltBin = filepath.Join(dir, "volt")
		cmd := exec.Command("go", "build", "-o", voltBin, "./cmd/volt")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			voltErr = fmt.Errorf("build the volt CLI (or set $VOLT_CLI): %v\n%s", err, out)
		}
	})
	if voltErr != nil {
		t.Fatal(voltErr)
	}
	return voltBin
}

var (
	voltOnce sync.Once
	voltBin  string
	voltErr  error
)

// prepareCloneSnapshots makes a template that touched touch pages and two
// snapshots of it, A rewriting those pages and B touching 256 more, each also
// in one CAS store.
func prepareCloneSnapshots(t *testing.T, touch int) []*Snapshot {
	t.Helper()
	vmmBin, elf := probeFixture(t)
	volt := voltCLIFixture(t)
	dir := t.TempDir()
	tmpl, err := PrepareSnapshot(context.Background(), SnapshotSpec{
		VMMBin: vmmBin, Kernel: elf, Memory: "128M", CPUs: 1, TouchPages: touch, Dir: t.TempDir(), Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var snaps []*Snapshot
	for i, work := range [][]string{{"echo a", fmt.Sprintf("touch %d", touch)}, {"echo b", fmt.Sprintf("touch %d", touch+256)}} {
		d := filepath.Join(dir, fmt.Sprint(i))
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		snap, err := DeriveSnapshot(context.Background(), DeriveSpec{
			VMMBin: vmmBin, Template: tmpl, Work: work, Dir: d, CASStore: filepath.Join(dir, "store"), VoltBin: volt, Timeout: 30 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	if snaps[0].TouchSum != tmpl.TouchSum || snaps[0].TouchPages != touch {
		t.Errorf("A rewrote the template's pages, yet its checksum %s (%d pages) differs from the template's %s", snaps[0].TouchSum, snaps[0].TouchPages, tmpl.TouchSum)
	}
	if snaps[1].TouchPages != touch+256 || snaps[1].TouchSum == tmpl.TouchSum {
		t.Errorf("B: %d pages, sum %s", snaps[1].TouchPages, snaps[1].TouchSum)
	}
	for i, s := range snaps {
		if c := s.FirstCAS(); len(s.CAS) != 1 || c.Manifest == "" || c.ChunkSize == 0 || c.Dir != filepath.Join(s.Dir, "cas") || s.MemFileBytes == 0 {
			t.Fatalf("snapshot %d: %+v, CAS %+v: want one CAS snapshot at the VMM's default size, in DIR/cas", i, s, s.CAS)
		}
	}
	return snaps
}

func TestClonesOfTwoSnapshotsShareChunksOnlyThroughTheCAS(t *testing.T) {
	requireKVM(t)
	const touch = 512 // 2 MiB: exactly one 2 MiB chunk, the same bytes in A and B
	snaps := prepareCloneSnapshots(t, touch)
	vmmBin, _ := probeFixture(t)
	reps := map[string]*CloneReport{}
	var all []*CloneReport
	for _, arm := range CloneArms {
		rep, err := RunClones(context.Background(), CloneSpec{VMMBin: vmmBin, Snapshots: snaps, N: 4, Arm: arm, ReadBack: true, Timeout: 90 * time.Second})
		if err != nil {
			t.Fatalf("%s: %v", arm, err)
		}
		reps[arm] = rep
		all = append(all, rep)
		var buf bytes.Buffer
		WriteClones(&buf, rep)
		t.Logf("\n%s", buf.String())
		seen := map[string]bool{}
		for i, c := range rep.Clones {
			snap := snaps[c.Snapshot]
			if c.Snapshot != i%2 {
				t.Errorf("%s clone %d restored snapshot %d", arm, i+1, c.Snapshot)
			}
			if !genIDRE.MatchString(c.GenID) || seen[c.GenID] {
				t.Errorf("%s clone %d: generation ID %q is malformed or repeated", arm, i+1, c.GenID)
			}
			seen[c.GenID] = true
			if c.Sum != snap.TouchSum {
				t.Errorf("%s clone %d: sum %s, snapshot %s", arm, i+1, c.Sum, snap.TouchSum)
			}
			if c.Total.Rss == 0 || c.Total.Pss == 0 || c.Total.Pss > c.Total.Rss {
				t.Errorf("%s clone %d: smaps_rollup %+v", arm, i+1, c.Total)
			}
			// Every clone read (or rewrote) its touched pages, so at
			// least those are resident in its guest memory files.
			if c.Guest.Rss < uint64(snap.TouchPages)*4 {
				t.Errorf("%s clone %d: guest Rss %d kB, touched %d kB", arm, i+1, c.Guest.Rss, snap.TouchPages*4)
			}
			if arm == ClonePrivate && c.Guest.PrivateDirty < uint64(snap.TouchPages)*4 {
				t.Errorf("private clone %d: guest Private_Dirty %d kB, rewrote %d kB", i+1, c.Guest.PrivateDirty, snap.TouchPages*4)
			}
			if arm == CloneCAS && c.Guest.SharedClean < 2048 {
				// The chunk of the touched pages is one file that A's
				// and B's clones all map.
				t.Errorf("CAS clone %d: guest Shared_Clean %d kB: the chunk A and B have in common is not shared", i+1, c.Guest.SharedClean)
			}
		}
	}
	var buf bytes.Buffer
	if err := WriteCloneArms(&buf, all); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", buf.String())
	_, cas := reps[CloneCAS].Sum()
	_, file := reps[CloneFile].Sum()
	_, private := reps[ClonePrivate].Sum()
	if cas.Pss >= file.Pss {
		t.Errorf("guest Pss: CAS %d kB not below files %d kB: A's and B's clones do not share their common chunk", cas.Pss, file.Pss)
	}
	if private.Pss*2 < file.Pss*3 {
		t.Errorf("guest Pss: private copies %d kB not well above the shared files' %d kB (two clones per snapshot)", private.Pss, file.Pss)
	}
	if _, err := RunClones(context.Background(), CloneSpec{VMMBin: vmmBin, Snapshots: []*Snapshot{{Dir: "/x", MemFileBytes: 1}}, N: 1, Arm: CloneCAS, Timeout: time.Second}); err == nil {
		t.Error("CAS clones of a snapshot without a CAS copy")
	}
}

// --from both: the same snapshot restored from its memory file and from the
// CAS at two chunk sizes, each a snapshot volt-vmm cut itself
// (mem_backend.chunk_size) of the one paused VM, every stage reached in
// order, and only the poweroff marker written (a restore, not a boot).
// All of it under volt-vmm's default confinement, snapshots included.
func TestRestoreFromCASAtEveryChunkSize(t *testing.T) {
	r := requireRunner(t)
	vmmBin, elf := probeFixture(t)
	volt := voltCLIFixture(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	snap, err := PrepareSnapshot(context.Background(), SnapshotSpec{
		VMMBin: vmmBin, Kernel: elf, Memory: "128M", CPUs: 1, TouchPages: 300, Dir: dir, Timeout: 30 * time.Second,
		CASStore: store, CASChunkSizes: []int64{2 << 20, 64 << 10}, VoltBin: volt,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.CAS) != 2 {
		t.Fatalf("%d CAS snapshots, want one per chunk size", len(snap.CAS))
	}
	big, small := snap.CAS[0], snap.CAS[1]
	for _, c := range snap.CAS {
		if c.Store != store || c.Dir != CASStateDir(dir, c.ChunkSize) || !isDigest(c.Manifest) || c.DataChunks == 0 {
			t.Errorf("CAS snapshot %+v", c)
		}
	}
	// The same memory, cut finer: another manifest, more and smaller data
	// chunks that hold fewer bytes (the touched pages, not whole 2 MiB
	// around them).
	if big.ChunkSize != 2<<20 || small.ChunkSize != 64<<10 || small.Manifest == big.Manifest ||
		small.DataChunks <= big.DataChunks || small.DataBytes >= big.DataBytes {
		t.Errorf("cuts: 2M %+v, 64K %+v: want 64 KiB chunks, another manifest, more data chunks, fewer data bytes", big, small)
	}
	targets := []RestoreTarget{FileTarget(snap), CASTarget(big), CASTarget(small)}
	arms, err := RestoreArms(voltConfig(t), snap, targets, false, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{arms[1].Name, arms[2].Name}; strings.Join(got, " ") != "restore-cas-2M restore-cas-64K" {
		t.Errorf("CAS arms %v", got)
	}
	const n = 3
	runs, err := r.RunPlan(context.Background(), Plan{Arms: arms, N: n, Observe: func(a Arm, b Boot) {
		if b.Err != nil {
			t.Errorf("%s: %v", a.Name, b.Err)
			return
		}
		if b.Record.MarkerWrites != 1 {
			t.Errorf("%s wrote %d boot markers, want 1 (poweroff)", a.Name, b.Record.MarkerWrites)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	report.WriteCompare(&buf, RestoreStageNames(), runs, nil)
	t.Logf("\n%s", buf.String())
	for _, run := range runs {
		for _, s := range RestoreStages {
			if st := run.Stage(s.Name); st == nil || st.Count != n {
				t.Errorf("%s: stage %s: %+v", run.VMM, s.Name, st)
			}
		}
	}
	// A state file whose manifest the store no longer holds is refused by
	// volt-vmm, never restored from whatever else is there: drop the 64 KiB
	// cut's name and collect it.
	for _, args := range [][]string{{"cas", "rm", small.Ref}, {"cas", "gc"}} {
		if out, err := exec.Command(volt, append(args, "--store", store)...).CombinedOutput(); err != nil {
			t.Fatalf("volt %v: %v\n%s", args, err, out)
		}
	}
	if b := r.Boot(context.Background(), RestoreTargetConfig(voltConfig(t), snap, CASTarget(small))); b.Err == nil {
		t.Error("restored a snapshot whose manifest is not in the store")
	} else {
		t.Logf("the 64 KiB cut after its manifest was collected: %v", b.Err)
	}
	if b := r.Boot(context.Background(), RestoreTargetConfig(voltConfig(t), snap, CASTarget(big))); b.Err != nil {
		t.Errorf("the 2 MiB cut, still named, after the gc: %v", b.Err)
	}
}

func TestDedupStoresTheSnapshotsOfOneTemplate(t *testing.T) {
	requireKVM(t)
	vmmBin, elf := probeFixture(t)
	rep, err := RunDedup(context.Background(), DedupSpec{
		VMMBin: vmmBin, Kernel: elf, VoltBin: voltCLIFixture(t), Memory: "128M", CPUs: 1, TemplateTouch: 600,
		Works: [][]string{{"echo x"}, {"touch 600"}, {"touch 700", "gen"}}, ChunkSizes: []int64{2 << 20, 64 << 10},
		Dir: t.TempDir(), Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteDedup(&buf, rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", buf.String())
	if len(rep.Snapshots) != 3 || len(rep.Sizes) != 2 {
		t.Fatalf("%d snapshots, %d sizes", len(rep.Snapshots), len(rep.Sizes))
	}
	for _, d := range rep.Sizes {
		var added int64
		for i := range d.Added {
			added += d.Added[i]
			if d.Alone[i] <= 0 || d.Added[i] > d.Alone[i] {
				t.Errorf("%s snapshot %d: alone %d, added %d", FormatChunkSize(d.ChunkSize), i+1, d.Alone[i], d.Added[i])
			}
		}
		// The first import into the shared store is the snapshot alone;
		// all together, stored is what the imports added, and no more
		// than the snapshots alone summed.
		if d.Added[0] != d.Alone[0] || added != d.Usage.StoredBytes || d.Usage.StoredBytes < slices.Max(d.Alone) {
			t.Errorf("%s: added %v, alone %v, stored %d", FormatChunkSize(d.ChunkSize), d.Added, d.Alone, d.Usage.StoredBytes)
		}
		if d.Usage.LogicalBytes != 3*128<<20 {
			t.Errorf("%s: logical %d, want three 128 MiB snapshots", FormatChunkSize(d.ChunkSize), d.Usage.LogicalBytes)
		}
	}
	if big, small := rep.Sizes[0].Usage.StoredBytes, rep.Sizes[1].Usage.StoredBytes; small > big {
		t.Errorf("64 KiB chunks stored %d bytes, more than 2 MiB chunks' %d", small, big)
	}
	// volt-vmm cut every snapshot at every size as the CLI cuts the same
	// bytes: the same manifests.
	for k, d := range rep.Sizes {
		if len(d.VMMDiffer) > 0 {
			t.Errorf("%s: volt-vmm's manifests of snapshots %v are not the CLI's", FormatChunkSize(d.ChunkSize), d.VMMDiffer)
		}
		for i, s := range rep.Snapshots {
			if c := s.CAS[k]; c.ChunkSize != d.ChunkSize || c.Dir != CASStateDir(s.Dir, d.ChunkSize) {
				t.Errorf("snapshot %d, cut %d: %+v, want %s chunks", i+1, k, c, FormatChunkSize(d.ChunkSize))
			}
		}
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
