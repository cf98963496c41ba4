package pool

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/agent"
	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

// vsockSnapshot boots the probe with a vsock device through the API, pauses
// and snapshots it into a new directory.
func vsockSnapshot(t *testing.T, cmdline string) string {
	t.Helper()
	vmmBin, kernel, _ := fixture(t)
	dir := shortDir(t)
	snap := filepath.Join(dir, "snap")
	if err := os.Mkdir(snap, 0o755); err != nil {
		t.Fatal(err)
	}
	v, err := spawn(context.Background(), spawnSpec{id: "snap", dir: filepath.Join(dir, "vm"), vmmBin: vmmBin, extraArgs: []string{"--console", "none", "--snapshot-dir", snap}, vsock: true})
	if v == nil {
		t.Fatal(err)
	}
	go v.proc.wait()
	defer func() {
		v.proc.kill()
		<-v.proc.done
	}()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := v.api
	for _, step := range []func() error{
		func() error { return c.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: 1, MemSizeMib: 64}) },
		func() error {
			return c.PutBootSource(ctx, types.BootSource{KernelImagePath: kernel, BootArgs: cmdline})
		},
		func() error { return c.PutVsock(ctx, types.Vsock{GuestCID: 3, UDSPath: v.vsockUDS}) },
		func() error { return c.PutMetrics(ctx, types.Metrics{MetricsPath: filepath.Join(dir, "metrics")}) },
		func() error { return c.Start(ctx) },
		func() error { return waitReady(ctx, v, false, filepath.Join(dir, "metrics"), 0) },
		func() error { return c.Pause(ctx) },
		func() error {
			return c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(snap, types.SnapshotStateFile), MemFilePath: filepath.Join(snap, types.SnapshotMemFile)})
		},
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	return snap
}

// Each clone of a vsock template listens on its own socket (the snapshot's
// path replaced through vsock_override), prepared before the acquire.
func TestVsockTemplateGivesEachCloneItsOwnSocket(t *testing.T) {
	snap := vsockSnapshot(t, "console=ttyS0 reboot=k panic=1")
	s := serve(t, Config{})
	ctx := context.Background()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "vs", FromSnapshot: snap, Vsock: true, Warm: 2}); err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "vs", 2)
	l, err := s.client.Acquire(ctx, "vs", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "vs", 2)
	var socks []string
	for _, v := range s.pool.VMs() {
		if v.ID != l.ID {
			socks = append(socks, filepath.Join(filepath.Dir(v.APISock), vmVsockSock))
		}
	}
	if l.VsockUDS == "" || filepath.Dir(l.VsockUDS) != filepath.Dir(l.APISock) {
		t.Fatalf("lease vsock %q (API %q)", l.VsockUDS, l.APISock)
	}
	seen := map[string]bool{}
	for _, p := range append(socks, l.VsockUDS) {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Type() != os.ModeSocket {
			t.Errorf("clone vsock socket %s: %v", p, err)
		}
		seen[p] = true
	}
	if len(seen) < 3 {
		t.Errorf("clones share vsock sockets: %v", seen)
	}
	// The probe here has no vsock driver, so nothing in the guest answers
	// the connection: a run fails at its deadline, never succeeds.
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if res, err := pc.RunOn(rctx, l, agent.Request{Args: []string{"echo", "x"}}, nil); err == nil {
		t.Errorf("run without an agent answered: %+v", res)
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
}

// probeHasAgent reports whether the probe guest built here answers the
// agent protocol on vsock (probe.agent on its command line).
func probeHasAgent(t *testing.T) bool {
	_, kernel, _ := fixture(t)
	b, err := os.ReadFile(kernel)
	return err == nil && bytes.Contains(b, []byte("probe.agent"))
}

// agentProbeCmdline boots the probe with its vsock agent.
const agentProbeCmdline = "console=ttyS0 reboot=k panic=1 probe.agent"

// agentProbePool serves a pool for a test of the probe's agent, and gives
// the probe's kernel; it skips where the probe built here has no agent.
func agentProbePool(t *testing.T) (*served, string) {
	t.Helper()
	if !probeHasAgent(t) {
		t.Skip("skipping: the probe guest built here has no vsock agent (probe.agent) yet")
	}
	_, kernel, _ := fixture(t)
	return serve(t, Config{}), kernel
}

// The FaaS flow end to end: a template whose readiness is its agent
// answering, then acquire → command through the agent → output → release,
// and clones that differ (their generation IDs).
func TestRunThroughTheGuestAgent(t *testing.T) {
	s, kernel := agentProbePool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "agent", Kernel: kernel, Cmdline: agentProbeCmdline,
		MemoryMiB: 64, Vsock: true, Warm: 2}); err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "agent", 2)
	res, lease, times, err := s.client.Run(ctx, "agent", time.Minute, agent.Request{Args: []string{"echo", "hello", "pool"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Success() || strings.TrimSpace(string(res.Stdout)) != "hello pool" || lease.Path != pc.PathWarm {
		t.Errorf("run: %+v stdout %q path %s", res.Status, res.Stdout, lease.Path)
	}
	t.Logf("acquire %v, answer %v, release %v", times.Acquire, times.FirstAnswer, times.Release)
	gens := map[string]bool{}
	for i := 0; i < 3; i++ {
		res, _, _, err := s.client.Run(ctx, "agent", time.Minute, agent.Request{Args: []string{"gen"}}, nil)
		if err != nil || !res.Success() {
			t.Fatalf("gen: %+v %v", res.Status, err)
		}
		gens[strings.TrimSpace(string(res.Stdout))] = true
	}
	if len(gens) != 3 {
		t.Errorf("generation IDs of 3 clones: %v, want 3 different", gens)
	}
	if _, err := client.New(lease.APISock).Describe(ctx); err == nil {
		t.Error("the VMM of a released lease still answers")
	}
	// The same through the CLI, as a FaaS caller would type it.
	_, _, voltpool := fixture(t)
	out, err := exec.CommandContext(ctx, voltpool, "run", "--socket", s.socket, "--quiet", "agent", "--", "echo", "from", "cli").Output()
	if err != nil || strings.TrimSpace(string(out)) != "from cli" {
		t.Errorf("voltpool run: %q %v", out, err)
	}
	if ls, _ := s.client.Leases(ctx); len(ls) != 0 {
		t.Errorf("voltpool run left leases: %+v", ls)
	}
}

// A primed template's warm VMMs have run once since their restore (their
// agent answered the pool's ping) and are paused again before they count
// as warm; each still answers its caller with its own generation ID. A
// guest whose agent never answers is never counted warm: its priming fails.
func TestPrimedWarmVMsAnsweredOnceAndWaitPaused(t *testing.T) {
	s, kernel := agentProbePool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "primed", Kernel: kernel, Cmdline: agentProbeCmdline,
		MemoryMiB: 64, Vsock: true, Prime: true, Warm: 2}); err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "primed", 2)
	for _, v := range s.pool.VMs() {
		info, err := client.New(v.APISock).Describe(ctx)
		if err != nil || info.State != "Paused" {
			t.Errorf("warm primed VMM %s: %+v %v, want Paused", v.ID, info, err)
		}
	}
	gens := map[string]bool{}
	for i := 0; i < 3; i++ {
		s.waitWarm(t, "primed", 2)
		res, lease, _, err := s.client.Run(ctx, "primed", time.Minute, agent.Request{Args: []string{"gen"}}, nil)
		if err != nil || !res.Success() || lease.Path != pc.PathWarm {
			t.Fatalf("gen: %+v %v (path %s)", res.Status, err, lease.Path)
		}
		gens[strings.TrimSpace(string(res.Stdout))] = true
	}
	if len(gens) != 3 {
		t.Errorf("generation IDs of 3 primed clones: %v, want 3 different", gens)
	}

	// The probe without probe.agent has no vsock driver: nobody answers,
	// and the trial restore of an adopted snapshot primes as the refill
	// would, so the template is refused rather than never warm.
	mute := vsockSnapshot(t, "console=ttyS0 reboot=k panic=1")
	_, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "mute", FromSnapshot: mute, Vsock: true, Prime: true, Warm: 1})
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "did not answer its ping") {
		t.Errorf("a primed template whose agent never answers: %v, want a 400 saying the ping went unanswered", err)
	}
	if ts, _ := s.client.Templates(ctx); len(ts) != 1 {
		t.Errorf("templates after the refusal: %+v", ts)
	}
}
