package trace

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/marker"
	"github.com/voltvmm/volt/guest/probe"
)

func TestMarkerMilestonesRoundTrip(t *testing.T) {
	for s := marker.Stage(0x40); s <= 0x7f; s++ {
		m, ok := Marker(s)
		if !ok {
			t.Fatalf("Marker(%#x) not traced", uint8(s))
		}
		back, ok := m.MarkerStage()
		if !ok || back != s {
			t.Fatalf("Marker(%#x).MarkerStage() = %#x, %v", uint8(s), uint8(back), ok)
		}
	}
	for _, s := range []marker.Stage{0, 0x3f, 0x80, 0xff} {
		if _, ok := Marker(s); ok {
			t.Errorf("Marker(%#x) accepted outside 0x40-0x7f", uint8(s))
		}
	}
	if got := Answer.String(); got != "answer" {
		t.Errorf("Answer.String() = %q", got)
	}
	if got := (Exit).String(); got != "exit" {
		t.Errorf("Exit.String() = %q", got)
	}
	if m, _ := Marker(marker.PID1); m.String() != "pid1" {
		t.Errorf("pid1 marker milestone prints as %q", m.String())
	}
}

func TestDecodeOrdersPointsAndAttributesExits(t *testing.T) {
	var raw stagesProc
	pid1, _ := Marker(marker.PID1)
	raw.Ts[Exec] = 1000
	raw.Ts[VMCreated] = 3000
	raw.Ts[GuestEntry] = 5000
	raw.Ts[pid1] = 9000
	raw.Ts[FirstOutput] = 12000
	raw.Ts[Exit] = 20000
	raw.KvmExits[GuestEntry] = 7
	raw.UserExits[GuestEntry] = 2
	raw.KvmExits[FirstOutput] = 4
	r, err := decode(&raw)
	if err != nil {
		t.Fatal(err)
	}
	want := []Point{
		{Milestone: Exec, At: 0},
		{Milestone: VMCreated, At: 2000},
		{Milestone: GuestEntry, At: 4000},
		{Milestone: pid1, At: 8000, KVMExits: 7, UserExits: 2},
		{Milestone: FirstOutput, At: 11000},
		{Milestone: Exit, At: 19000, KVMExits: 4},
	}
	if len(r.Points) != len(want) {
		t.Fatalf("points = %+v, want %+v", r.Points, want)
	}
	for i := range want {
		if r.Points[i] != want[i] {
			t.Errorf("point %d = %+v, want %+v", i, r.Points[i], want[i])
		}
	}
	if at, ok := r.At(pid1); !ok || at != 8000 {
		t.Errorf("At(pid1) = %v, %v", at, ok)
	}
}

func TestDecodeWithoutExecFails(t *testing.T) {
	var raw stagesProc
	raw.Ts[VMCreated] = 5
	if _, err := decode(&raw); !errors.Is(err, ErrNoExec) {
		t.Fatalf("decode without exec: %v, want ErrNoExec", err)
	}
}

// requireTracer loads the tracer or skips: it needs root, BTF and KVM.
func requireTracer(t *testing.T) *Tracer {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	tr, err := New()
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("eBPF tracer cannot load here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "..", "..")
}

// bootProbe runs the probe under volt-vmm through the gate and powers it off
// once it is ready.
func bootProbe(t *testing.T, tr *Tracer) Record {
	t.Helper()
	root := repoRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vmmBin := filepath.Join(root, "bin", "volt-vmm")
	if _, err := os.Stat(vmmBin); err != nil {
		build := exec.CommandContext(ctx, "go", "build", "-o", vmmBin, "./cmd/volt-vmm")
		build.Dir = root
		// As scripts/setup builds it: volt-vmm refuses seccomp when built with cgo.
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		if err != nil {
			t.Fatalf("build volt-vmm: %v\n%s", err, out)
		}
	}
	elf := filepath.Join(root, "build", "guest", "probe.elf")
	if _, err := os.Stat(elf); err != nil {
		if elf, err = probe.Path(ctx, t.TempDir()); err != nil {
			t.Skipf("no probe guest: %v", err)
		}
	}
	g := Command(ctx, vmmBin, "--kernel", elf, "--memory", "128M", "--cpus", "1")
	stdin, err := g.Cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := g.Cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(g); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == probe.ReadyLine {
			io.WriteString(stdin, "poweroff\n")
			break
		}
	}
	io.Copy(io.Discard, stdout)
	if err := g.Cmd.Wait(); err != nil {
		t.Fatalf("volt-vmm: %v", err)
	}
	rec, err := tr.Collect(g.Cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestTracerSeesEveryStageOfAProbeBoot(t *testing.T) {
	tr := requireTracer(t)
	rec := bootProbe(t, tr)
	for _, p := range rec.Points {
		t.Logf("%-14s %9.3f ms  kvm_exits=%d user_exits=%d", p.Milestone, float64(p.At)/1e6, p.KVMExits, p.UserExits)
	}
	pid1, _ := Marker(marker.PID1)
	ready, _ := Marker(marker.Ready)
	// bootProbe answers the ready line with "poweroff", whose reply
	// ("volt-probe: poweroff") is the first output after ready: Answer.
	order := []Milestone{Exec, VMCreated, GuestEntry, pid1, ready, Answer, Exit}
	var last time.Duration
	for _, m := range order {
		at, ok := rec.At(m)
		if !ok {
			t.Fatalf("no %s in %+v", m, rec.Points)
		}
		if at < last {
			t.Errorf("%s at %v, before the previous stage (%v)", m, at, last)
		}
		last = at
	}
	if _, ok := rec.At(FirstOutput); !ok {
		t.Error("no first console output")
	}
	if rec.VCPUs != 1 || rec.MemoryRegions == 0 {
		t.Errorf("vcpus = %d, memory regions = %d", rec.VCPUs, rec.MemoryRegions)
	}
}

// watched lists the TGIDs in the kernel's process filter.
func watched(t *testing.T, tr *Tracer) []uint32 {
	t.Helper()
	var (
		key  uint32
		val  stagesProc
		keys []uint32
	)
	it := tr.objs.Procs.Iterate()
	for it.Next(&key, &val) {
		keys = append(keys, key)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// A launched process joins the filter at its fork and is timed from its
// exec; its own children (forked by it, not by the launcher) do not join,
// and collecting it leaves nothing behind.
func TestStartEnrolsOnlyTheLaunchedProcess(t *testing.T) {
	tr := requireTracer(t)
	g := Command(context.Background(), "/bin/sh", "-c", "/bin/true & wait; /bin/true & wait")
	if err := tr.Start(g); err != nil {
		t.Fatal(err)
	}
	pid := g.Cmd.Process.Pid
	if err := g.Cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if w := watched(t, tr); len(w) != 1 || w[0] != uint32(pid) {
		t.Errorf("watched %v, want only the launched shell %d (not its children)", w, pid)
	}
	rec, err := tr.Collect(pid)
	if err != nil {
		t.Fatal(err)
	}
	exit, ok := rec.At(Exit)
	if rec.Points[0].Milestone != Exec || !ok || exit <= 0 || exit > 5*time.Second {
		t.Errorf("record %+v: want exec at 0, then an exit", rec.Points)
	}
	if w := watched(t, tr); len(w) != 0 {
		t.Errorf("still watched after Collect: %v", w)
	}
}

// With Follow, the launched process's first child to exec joins too, from
// its fork: its first exec is its Exec, a later one its LastExec (as the
// jail process of volt-jailer execs the jailer again, then volt-vmm), and
// both records share one clock (Origin). A child that ends without an exec
// (Go's os/exec forks one, to probe for pidfd support) and the second child
// leave nothing behind.
func TestFollowEnrolsTheFirstChildAndSeesItsLastExec(t *testing.T) {
	tr := requireTracer(t)
	g := Command(context.Background(), "/bin/sh", "-c", `(exit 0); /bin/sh -c "exec /bin/sleep 0.01"; /bin/true; true`)
	g.Follow = true
	if err := tr.Start(g); err != nil {
		t.Fatal(err)
	}
	pid := g.Cmd.Process.Pid
	if err := g.Cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if w := watched(t, tr); len(w) != 2 {
		t.Errorf("watched %v, want the launched shell %d and its first child only", w, pid)
	}
	rec, err := tr.Collect(pid)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Child == 0 {
		t.Fatalf("no child recorded: %+v", rec)
	}
	if _, ok := rec.At(LastExec); ok {
		t.Errorf("the launched shell exec'd once, yet has a last exec: %+v", rec.Points)
	}
	child, err := tr.Collect(rec.Child)
	if err != nil {
		t.Fatal(err)
	}
	last, ok := child.At(LastExec)
	exit, _ := child.At(Exit)
	if !ok || last <= 0 || exit < last+5*time.Millisecond {
		t.Errorf("child %d: %+v: want exec, a later exec, then exit ≥ 10 ms after it (the sleep)", rec.Child, child.Points)
	}
	if child.Origin <= rec.Origin {
		t.Errorf("child exec'd at %v, not after its parent's exec at %v", child.Origin, rec.Origin)
	}
	if w := watched(t, tr); len(w) != 0 {
		t.Errorf("still watched after Collect: %v", w)
	}
}

// A start whose exec fails is an error, and the child, enrolled at its fork,
// is forgotten when it ends without an exec.
func TestStartOfAMissingBinaryFailsAndLeavesNothingWatched(t *testing.T) {
	tr := requireTracer(t)
	g := Command(context.Background(), filepath.Join(t.TempDir(), "no-such-vmm"))
	if err := tr.Start(g); err == nil {
		g.Cmd.Wait()
		t.Fatal("started a binary that does not exist")
	}
	if w := watched(t, tr); len(w) != 0 {
		t.Errorf("a failed start left %v watched", w)
	}
	if _, err := tr.Collect(12345678); !errors.Is(err, ErrNoExec) {
		t.Errorf("Collect of an unknown PID: %v, want ErrNoExec", err)
	}
}

// Launches from many goroutines at once each enrol their own process, and
// only it, however the Go runtime moves goroutines and starts threads.
func TestConcurrentStartsAreEachTimedFromTheirOwnExec(t *testing.T) {
	tr := requireTracer(t)
	const workers, each = 8, 6
	errs := make(chan error, workers*each)
	pids := make(chan int, workers*each)
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < each; i++ {
				g := Command(context.Background(), "/bin/true")
				if err := tr.Start(g); err != nil {
					errs <- err
					continue
				}
				if err := g.Cmd.Wait(); err != nil {
					errs <- err
					continue
				}
				pids <- g.Cmd.Process.Pid
			}
		}()
	}
	for w := 0; w < workers; w++ {
		<-done
	}
	close(errs)
	close(pids)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	for pid := range pids {
		n++
		rec, err := tr.Collect(pid)
		if err != nil {
			t.Errorf("pid %d: %v", pid, err)
			continue
		}
		if exit, ok := rec.At(Exit); !ok || exit <= 0 {
			t.Errorf("pid %d: record %+v", pid, rec.Points)
		}
	}
	if n != workers*each {
		t.Errorf("%d of %d starts succeeded", n, workers*each)
	}
	if w := watched(t, tr); len(w) != 0 {
		t.Errorf("left watched: %v", w)
	}
}
