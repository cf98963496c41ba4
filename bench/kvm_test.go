package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/gate"
	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/stats"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/probe"
)

// requireRunner loads the tracer, or skips when this machine cannot run
// the KVM tests (no /dev/kvm, not root, no BTF).
func requireRunner(t *testing.T) *Runner {
	t.Helper()
	if testing.Short() {
		t.Skip("boots guests; skipped in -short mode")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	r, err := NewRunner()
	if errors.Is(err, trace.ErrUnsupported) {
		t.Skipf("eBPF tracer cannot load here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

var (
	fixtureOnce            sync.Once
	fixtureVMM, fixtureELF string
	fixtureErr             error

	floorOnce sync.Once
	floorDir  string
	floorErr  error
)

// TestMain removes the fixtures' build directories.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range fixtureDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

var fixtureDirs []string

// probeFixture builds volt-vmm from this tree (so its test flags exist) and
// finds or builds the probe guest. $VOLT_VMM names a volt-vmm to use
// instead, e.g. while the tree's VMM is being changed by someone else.
func probeFixture(t *testing.T) (vmmBin, kernel string) {
	t.Helper()
	fixtureOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			fixtureErr = err
			return
		}
		dir, err := os.MkdirTemp("", "voltbench-test-")
		if err != nil {
			fixtureErr = err
			return
		}
		fixtureDirs = append(fixtureDirs, dir)
		if env := os.Getenv("VOLT_VMM"); env != "" {
			fixtureVMM = env
		} else {
			fixtureVMM = filepath.Join(dir, "volt-vmm")
			cmd := exec.Command("go", "build", "-o", fixtureVMM, "./cmd/volt-vmm")
			cmd.Dir = root
			// Without cgo, as scripts/setup builds it: a cgo volt-vmm
			// refuses to start with its seccomp filters on.
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fixtureErr = errors.New("build volt-vmm: " + err.Error() + "\n" + string(out))
				return
			}
		}
		fixtureELF = filepath.Join(root, "build", "guest", "probe.elf")
		if _, err := os.Stat(fixtureELF); err != nil {
			fixtureELF, fixtureErr = probe.Path(context.Background(), dir)
		}
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixtureVMM, fixtureELF
}

// floorFixture builds the floor helpers with bench/floor/build.sh (gcc and
// go, both installed by scripts/setup) into a temporary directory.
func floorFixture(t *testing.T) string {
	t.Helper()
	floorOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			floorErr = err
			return
		}
		if floorDir, err = os.MkdirTemp("", "voltbench-floor-"); err != nil {
			floorErr = err
			return
		}
		fixtureDirs = append(fixtureDirs, floorDir)
		out, err := exec.Command(filepath.Join(root, "bench", "floor", "build.sh"), floorDir).CombinedOutput()
		if err != nil {
			floorErr = errors.New("bench/floor/build.sh: " + err.Error() + "\n" + string(out))
		}
	})
	if floorErr != nil {
		t.Fatal(floorErr)
	}
	return floorDir
}

func voltConfig(t *testing.T, extra ...string) Config {
	vmmBin, elf := probeFixture(t)
	return Config{VMM: VMMVolt, VMMBin: vmmBin, Guest: GuestProbe, Kernel: elf, Memory: "128M", CPUs: 1,
		ExtraArgs: extra, Timeout: 15 * time.Second}
}

var bootTimerRE = regexp.MustCompile(`(?m)^boot-timer: exec→(\S+) (\d+) µs$`)

// Agreement between the kernel's view and volt-vmm's own boot-timer.
//
// The two clocks have different origins: eBPF times from the exec of the
// VMM, the boot-timer from volt-vmm's package initialisation, which comes
// after the kernel has loaded the binary and the Go runtime has started.
// So the test measures that offset on the first stage both sides see
// (eBPF vm-ready vs boot-timer vm-created). It can never be negative
// (beyond the few µs between the ioctl's return in the kernel and
// volt-vmm's clock read), whatever the load: every boot is held to that.
// Its size is process start-up, which follows the scheduler: medians of
// 2.5–3.9 ms over 7 boots at load 3–4.5, 27 ms at load 8.7 with Linux
// guests and QEMU running beside the test. A bound on it would be a
// wall-clock assertion, so it is only logged. The agreement that matters
// comes next:
// every later stage, shifted by the same offset, must agree within
// max(0.5 ms, 5 %), on the median too. The residual comes from where each
// side reads the clock: the kernel at the port write or ioctl return,
// volt-vmm after the exit reaches user space (~10 µs per exit on this host).
const (
	agreeAbs    = 500 * time.Microsecond
	agreeRel    = 0.05
	originSlack = 100 * time.Microsecond // the kernel reads its clock first
)

func TestEBPFStageTimesAgreeWithVoltBootTimer(t *testing.T) {
	r := requireRunner(t)
	cfg := voltConfig(t, "--boot-timer")
	// Each side reads its clock on a different thread, and on a loaded
	// machine either can be descheduled between the event and the read
	// (one CI run saw a single boot off by 0.54 ms). Agreement is therefore
	// judged on each stage's median difference over the boots, which one
	// descheduled sample cannot move.
	const boots = 7
	deltas := map[string][]time.Duration{}
	timerAt := map[string][]time.Duration{}
	var offsets []time.Duration
	for i := 0; i < boots; i++ {
		b := r.Boot(context.Background(), cfg)
		if b.Err != nil {
			t.Fatalf("boot %d: %v", i, b.Err)
		}
		timer := map[string]time.Duration{}
		for _, m := range bootTimerRE.FindAllStringSubmatch(b.Stderr, -1) {
			us, _ := strconv.ParseInt(m[2], 10, 64)
			timer[m[1]] = time.Duration(us) * time.Microsecond
		}
		get := func(ebpfName, timerName string) (time.Duration, time.Duration) {
			e, ok := b.Stages[ebpfName]
			if !ok {
				t.Fatalf("boot %d: eBPF has no %s", i, ebpfName)
			}
			v, ok := timer[timerName]
			if !ok {
				t.Fatalf("boot %d: boot-timer has no %s:\n%s", i, timerName, b.Stderr)
			}
			return e.At, v
		}
		e0, v0 := get("vmm-ready", "vm-created")
		offset := e0 - v0
		t.Logf("boot %d: origin offset (exec → volt-vmm's package init) %.3f ms", i, float64(offset)/1e6)
		if offset < -originSlack {
			t.Errorf("boot %d: eBPF vm-ready %v vs boot-timer vm-created %v: offset %v, below −%v: the exec came after package init", i, e0, v0, offset, originSlack)
		}
		offsets = append(offsets, offset)
		// Rows whose meaning is the same on both sides.
		for _, pair := range [][2]string{{"guest-entry", "guest-entry"}, {"kernel-entry", "kernel-entry"}, {"pid1", "pid1"}, {"first-output", "first-output"}, {"ready", "ready"}} {
			e, v := get(pair[0], pair[1])
			d := e - offset - v
			tol := max(agreeAbs, time.Duration(agreeRel*float64(v)))
			t.Logf("boot %d %-12s eBPF %8.3f ms  boot-timer %8.3f ms  Δ after offset %+.3f ms (±%v)", i, pair[0], float64(e)/1e6, float64(v)/1e6, float64(d)/1e6, tol)
			deltas[pair[0]] = append(deltas[pair[0]], d)
			timerAt[pair[0]] = append(timerAt[pair[0]], v)
		}
	}
	t.Logf("median origin offset %.3f ms over %d boots", float64(median(offsets))/1e6, len(offsets))
	for stage, ds := range deltas {
		d, v := median(ds), median(timerAt[stage])
		tol := max(agreeAbs, time.Duration(agreeRel*float64(v)))
		if d < -tol || d > tol {
			t.Errorf("%s: median Δ after offset %v over %d boots, beyond ±%v", stage, d, len(ds), tol)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func TestQEMUProducesTheSameStageRows(t *testing.T) {
	r := requireRunner(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("no QEMU: %v", err)
	}
	_, elf := probeFixture(t)
	cfg := Config{VMM: VMMQEMU, VMMBin: qemu, Guest: GuestProbe, Kernel: elf, Memory: "128M", CPUs: 1, Timeout: 20 * time.Second}
	volt := voltConfig(t)
	runs, err := r.RunPlan(context.Background(), Plan{Arms: []Arm{{Name: "volt", Config: volt}, {Name: "qemu", Config: cfg}}, N: 3})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	report.WriteCompare(&buf, StageNames(), runs, nil)
	t.Logf("\n%s", buf.String())
	for _, run := range runs {
		for _, s := range Stages {
			if got := run.Stage(s.Name).Count; got != 3 {
				t.Errorf("%s: stage %s seen in %d of 3 boots", run.VMM, s.Name, got)
			}
		}
	}
}

func TestGatePassesCleanRunAndFailsInjectedDelay(t *testing.T) {
	r := requireRunner(t)
	const n = 20
	clean := voltConfig(t)
	// --test-marker-delay stalls the guest at every boot marker: 5 ms at
	// each of 0x40, 0x41, 0x42 and 0x60 puts pid1 20 ms later.
	slow := voltConfig(t, "--test-marker-delay=5ms")
	runs, err := r.RunPlan(context.Background(), Plan{Arms: []Arm{{Name: "base", Config: clean}, {Name: "clean", Config: clean}, {Name: "slow", Config: slow}}, N: n})
	if err != nil {
		t.Fatal(err)
	}
	tol := stats.DefaultTolerance()
	g, err := gate.Judge(runs[0], runs[1], GatedStageNames(), tol)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	g.Write(&buf)
	t.Logf("clean A/B:\n%s", buf.String())
	if g.Failed {
		t.Error("a clean same-run A/B failed the gate")
	}
	g, err = gate.Judge(runs[0], runs[2], GatedStageNames(), tol)
	if err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	g.Write(&buf)
	t.Logf("injected 5 ms marker delay:\n%s", buf.String())
	if !g.Failed {
		t.Fatal("an injected 5 ms marker delay passed the gate")
	}
	// The failure must come from the stages the delay moved, never from
	// one before the first delayed marker. Which of them crosses the
	// per-test alpha with 20 boots a side depends on the load (pid1 +139 %
	// at p = 0.0013 once, at load 8.7), so any one of them may.
	delayed := 0
	for _, row := range g.Rows {
		moved := row.Stage != "vmm-ready" && row.Stage != "guest-entry"
		switch {
		case !moved && row.Regressed():
			t.Errorf("%s, before the delayed markers, flagged: p50 %+v, tail %+v %s", row.Stage, row.Median, row.Tail, row.Missing)
		case moved && row.Regressed():
			delayed++
		}
	}
	if delayed == 0 {
		t.Error("the gate failed, but on no stage the delay moved")
	}
}
