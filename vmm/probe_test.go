package vmm_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/marker"
	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

var (
	probeOnce sync.Once
	probeDir  string // the probe built for this test binary; removed by TestMain
	probePath string
	probeErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if probeDir != "" {
		os.RemoveAll(probeDir)
	}
	os.Exit(code)
}

// probeELF builds the probe guest once per test binary (or uses $VOLT_PROBE).
func probeELF(t testing.TB) string {
	t.Helper()
	probeOnce.Do(func() {
		if p := os.Getenv(probe.EnvProbe); p != "" {
			probePath, probeErr = probe.Path(context.Background(), "")
			return
		}
		probeDir, probeErr = os.MkdirTemp("", "volt-probe-")
		if probeErr == nil {
			probePath, probeErr = probe.Build(context.Background(), probeDir)
		}
	})
	if probeErr != nil {
		t.Fatalf("build probe guest: %v", probeErr)
	}
	return probePath
}

// session is a running probe VM with its console wired to the test.
type session struct {
	t      testing.TB
	vm     *vmm.VM
	in     *io.PipeWriter
	lines  chan string
	result chan vmm.Result
	log    strings.Builder
	mu     sync.Mutex
}

func startProbe(t testing.TB, cfg vmm.Config) *session {
	t.Helper()
	kvmtest.Require(t)
	if cfg.KernelPath == "" {
		cfg.KernelPath = probeELF(t)
	}
	if cfg.MemorySize == 0 {
		cfg.MemorySize = 64 << 20
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	cfg.Console, cfg.ConsoleInput = outW, inR
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("vmm.New: %v", err)
	}
	return attach(t, vm, inW, outR, outW)
}

// attach runs vm and connects its console pipes to a new session.
func attach(t testing.TB, vm *vmm.VM, inW *io.PipeWriter, outR *io.PipeReader, outW *io.PipeWriter) *session {
	t.Helper()
	s := &session{t: t, vm: vm, in: inW, lines: make(chan string, 100), result: make(chan vmm.Result, 1)}
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	go func() {
		s.result <- vm.Run(context.Background())
		outW.Close()
	}()
	t.Cleanup(func() {
		vm.Stop()
		inW.Close()
		vm.Close()
	})
	return s
}

// expect waits for a line matching want (a prefix) and returns it.
func (s *session) expect(want string) string {
	s.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("console closed waiting for %q; output so far:\n%s", want, s.output())
			}
			if strings.HasPrefix(l, want) {
				return l
			}
		case <-timeout:
			s.t.Fatalf("timed out waiting for %q; output so far:\n%s", want, s.output())
		}
	}
}

func (s *session) send(cmd string) {
	s.t.Helper()
	if _, err := fmt.Fprintf(s.in, "%s\n", cmd); err != nil {
		s.t.Fatalf("send %q: %v", cmd, err)
	}
}

func (s *session) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

func (s *session) wait() vmm.Result {
	s.t.Helper()
	select {
	case r := <-s.result:
		return r
	case <-time.After(30 * time.Second):
		s.t.Fatalf("VM did not stop; output:\n%s", s.output())
	}
	return vmm.Result{}
}

func TestProbeBootsAndServesCommands(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("%dvcpu", cpus), func(t *testing.T) {
			s := startProbe(t, vmm.Config{CPUs: cpus})
			banner := s.expect("volt-probe: booted")
			gotCPUs, mem, ok := probe.ParseBanner(banner)
			if !ok || gotCPUs != cpus {
				t.Fatalf("banner %q: want cpus=%d from our MP table", banner, cpus)
			}
			if mem < 60 || mem > 64 {
				t.Errorf("banner reports %d MiB, want about 64 from our memory map", mem)
			}
			s.expect(probe.ReadyLine)
			s.send("echo hello volt")
			s.expect("hello volt")
			s.send("cpus")
			if l := s.expect("cpus "); l != fmt.Sprintf("cpus %d", cpus) {
				t.Errorf("cpus command: %q", l)
			}
			s.send("touch 100")
			touched := s.expect("touched 100 sum=")
			s.send("sum 100")
			sum := s.expect("sum 100 sum=")
			if strings.TrimPrefix(touched, "touched") != strings.TrimPrefix(sum, "sum") {
				t.Errorf("touch and sum disagree: %q vs %q", touched, sum)
			}
			s.send("poweroff")
			s.expect(probe.PoweroffLine)
			if r := s.wait(); r.Reason != vmm.StopPowerOff {
				t.Fatalf("VM stopped with %s (%v), want poweroff", r.Reason, r.Err)
			}
		})
	}
}

func TestProbeWritesBootMarkersInOrder(t *testing.T) {
	s := startProbe(t, vmm.Config{})
	s.expect(probe.ReadyLine)
	s.send("poweroff")
	s.wait()
	var got []marker.Stage
	for _, e := range s.vm.Markers().Events() {
		got = append(got, e.Stage)
	}
	want := []marker.Stage{marker.KernelEntry, marker.KernelLongMode, marker.KernelDevices, marker.PID1, marker.Ready, marker.Shutdown}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("markers %v, want %v", got, want)
	}
	stages := s.vm.BootStages()
	names := map[string]bool{}
	for _, st := range stages {
		names[st.Name] = true
		if st.At <= 0 {
			t.Errorf("stage %s at %v, want after the origin", st.Name, st.At)
		}
	}
	for _, n := range []string{"vm-created", "guest-entry", "first-output", "pid1", "ready"} {
		if !names[n] {
			t.Errorf("boot stages lack %q: %v", n, stages)
		}
	}
}

func TestPauseAndResume(t *testing.T) {
	s := startProbe(t, vmm.Config{CPUs: 2})
	s.expect(probe.ReadyLine)
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if !s.vm.Paused() {
		t.Fatal("Paused() false after Pause")
	}
	s.send("echo while paused")
	select {
	case l := <-s.lines:
		t.Fatalf("paused guest answered %q", l)
	case <-time.After(200 * time.Millisecond):
	}
	if err := s.vm.Resume(); err != nil {
		t.Fatal(err)
	}
	s.expect("while paused")
	s.send("poweroff")
	if r := s.wait(); r.Reason != vmm.StopPowerOff {
		t.Fatalf("stopped with %s", r.Reason)
	}
}

func TestStopEndsARunningGuest(t *testing.T) {
	s := startProbe(t, vmm.Config{CPUs: 2})
	s.expect(probe.ReadyLine)
	s.vm.Stop()
	if r := s.wait(); r.Reason != vmm.StopCanceled {
		t.Fatalf("stopped with %s, want canceled", r.Reason)
	}
}

func TestTouchBeyondMemoryIsRefusedByTheGuest(t *testing.T) {
	s := startProbe(t, vmm.Config{MemorySize: 8 << 20})
	s.expect(probe.ReadyLine)
	s.send("touch 100000")
	s.expect("error:")
	s.send("poweroff")
	s.wait()
}

// TestProbeBootsAsA32BitELF boots the same probe converted to a 32-bit ELF
// (as QEMU accepts PVH kernels): the PVH entry is 32-bit code anyway.
func TestProbeBootsAsA32BitELF(t *testing.T) {
	elf32 := filepath.Join(t.TempDir(), "probe32.elf")
	if out, err := exec.Command("objcopy", "-O", "elf32-i386", probeELF(t), elf32).CombinedOutput(); err != nil {
		t.Fatalf("objcopy (binutils, installed by scripts/setup with gcc): %v: %s", err, out)
	}
	s := startProbe(t, vmm.Config{KernelPath: elf32})
	s.expect(probe.ReadyLine)
	s.send("echo from a 32-bit image")
	s.expect("from a 32-bit image")
	s.send("poweroff")
	if r := s.wait(); r.Reason != vmm.StopPowerOff {
		t.Fatalf("stopped with %s: %v", r.Reason, r.Err)
	}
}

// A reset the guest did not announce is never a clean power-off: the
// probe's "reset" reboots without the shutdown marker, and its "panic"
// writes the kernel-panic marker first, as our Linux kernel does.
func TestUnannouncedResetsAndPanicsAreNotPowerOffs(t *testing.T) {
	for cmd, want := range map[string]vmm.StopReason{"reset": vmm.StopReset, "panic": vmm.StopPanic, "poweroff": vmm.StopPowerOff} {
		t.Run(cmd, func(t *testing.T) {
			s := startProbe(t, vmm.Config{})
			s.expect(probe.ReadyLine)
			s.send(cmd)
			if r := s.wait(); r.Reason != want {
				t.Fatalf("%s: stopped with %s (%v), want %s", cmd, r.Reason, r.Err, want)
			}
		})
	}
}
