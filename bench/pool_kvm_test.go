package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/agent"
	pc "github.com/voltvmm/volt/pool/client"
)

// TestPoolBenchThroughARealDaemon runs a small `voltbench pool` (1 and 2
// callers, 4 samples per arm) against voltpool serving the probe: every
// cycle of each arm succeeds on the path it is meant to measure, and the
// table and memory figures come out.
func TestPoolBenchThroughARealDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("boots guests; skipped in -short mode")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	vmm, kernel := probeFixture(t)
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "vbp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	voltpool := filepath.Join(dir, "voltpool")
	build := exec.Command("go", "build", "-o", voltpool, "./cmd/voltpool")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build voltpool: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "p.sock")
	daemon := exec.Command(voltpool, "serve", "--socket", sock, "--state-dir", filepath.Join(dir, "s"), "--vmm", vmm, "--drain-timeout", "0s")
	var log bytes.Buffer
	daemon.Stdout, daemon.Stderr = &log, &log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		daemon.Process.Signal(unix.SIGTERM)
		daemon.Wait()
	}()
	c := pc.New(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if _, err := c.Status(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("voltpool never answered: %s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	elf, _ := os.ReadFile(kernel)
	hasAgent := bytes.Contains(elf, []byte("probe.agent"))
	cmdline := "console=ttyS0 reboot=k panic=1"
	if hasAgent {
		cmdline += " probe.agent"
	}
	if _, err := c.CreateTemplate(ctx, pc.TemplateSpec{Name: "w", Kernel: kernel, Cmdline: cmdline, MemoryMiB: 64, Vsock: hasAgent, Warm: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateTemplate(ctx, pc.TemplateSpec{Name: "c", FromSnapshot: filepath.Join(dir, "s", "templates", "w", "snapshot"), Vsock: hasAgent}); err != nil {
		t.Fatal(err)
	}
	primed := ""
	if hasAgent {
		primed = "p"
		if _, err := c.CreateTemplate(ctx, pc.TemplateSpec{Name: primed, FromSnapshot: filepath.Join(dir, "s", "templates", "w", "snapshot"), Vsock: true, Prime: true, Warm: 2}); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := RunPool(ctx, PoolSpec{Client: c, Warm: "w", Cold: "c", Primed: primed, Callers: []int{1, 2}, Samples: 4, Agent: hasAgent,
		Ask: agent.Request{Args: []string{"echo", "answer"}},
		Boot: &PoolColdBoot{VMMBin: vmm, Kernel: kernel, Agent: hasAgent, ReadyLine: "volt-probe: ready", Dir: dir,
			Args: []string{"--memory", "64M", "--cmdline", cmdline}}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{PoolArmWarm: pc.PathWarm, PoolArmWarmPrimed: pc.PathWarm, PoolArmColdRestore: pc.PathCold, PoolArmColdBoot: "boot"}
	for _, cell := range rep.Cells {
		if cell.Errors != 0 {
			t.Errorf("%s at %d callers: %d errors, first %s", cell.Arm, cell.Callers, cell.Errors, cell.FirstErr)
		}
		if n := cell.Paths[want[cell.Arm]]; n != 4 {
			t.Errorf("%s at %d callers: paths %v, want 4 %s", cell.Arm, cell.Callers, cell.Paths, want[cell.Arm])
		}
		answer := cell.Stages[PoolStageFirstAnswer].TotalCount()
		if (hasAgent || cell.Arm == PoolArmColdBoot) && answer != 4 {
			t.Errorf("%s at %d callers: %d first answers", cell.Arm, cell.Callers, answer)
		}
		if cell.Arm != PoolArmColdBoot && cell.Stages[PoolStageAcquire].TotalCount() != 4 {
			t.Errorf("%s at %d callers: %d acquires", cell.Arm, cell.Callers, cell.Stages[PoolStageAcquire].TotalCount())
		}
	}
	if len(rep.WarmPSS) != 2 || len(rep.LeasedPSS) != 2 {
		t.Errorf("PSS of %d warm and %d leased VMMs, want 2 each", len(rep.WarmPSS), len(rep.LeasedPSS))
	}
	if hasAgent && (len(rep.PrimedWarmPSS) != 2 || len(rep.PrimedLeasedPSS) != 2) {
		t.Errorf("PSS of %d primed warm and %d leased VMMs, want 2 each", len(rep.PrimedWarmPSS), len(rep.PrimedLeasedPSS))
	}
	var out bytes.Buffer
	WritePool(&out, rep)
	if !strings.Contains(out.String(), "2 callers (ms)") || !strings.Contains(out.String(), "cold-boot p50") {
		t.Errorf("table:\n%s", out.String())
	}
	if ls, _ := c.Leases(ctx); len(ls) != 0 {
		t.Errorf("the bench left leases: %+v", ls)
	}
}
