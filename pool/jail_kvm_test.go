package pool

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	pc "github.com/voltvmm/volt/pool/client"
)

// testUIDs is the uid range of the jailed tests: no account's (checked by
// the pool on open) and within the default range's neighbourhood.
var testUIDs = UIDRange{First: 1900100000, Last: 1900100063}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: jailing VMMs needs root")
	}
}

// jailedPool serves a pool that jails every VMM (and, with a store, keeps
// templates in the CAS).
func jailedPool(t *testing.T, withCAS bool) (*served, *cas.Store) {
	t.Helper()
	requireRoot(t)
	snapTool, jailer := tools(t)
	cfg := Config{SnapshotTool: snapTool, Jail: &JailConfig{Jailer: jailer, UIDs: testUIDs}}
	if !withCAS {
		return serve(t, cfg), nil
	}
	return casPool(t, cfg)
}

// procStatus reads /proc/PID/status as a map.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// jailedVM is what a test checks of one jailed VMM.
type jailedVM struct {
	pid, supervisor, uid int
	dir                  string
}

func jailedVMs(s *served) map[string]jailedVM {
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	out := map[string]jailedVM{}
	for id, v := range s.pool.vms {
		if v.jail != nil {
			out[id] = jailedVM{pid: v.pid(), supervisor: v.proc.pid, uid: v.jail.uid, dir: v.jail.dir}
		}
	}
	return out
}

// checkConfined checks that volt-vmm pid runs as uid with no capability,
// PID 1 of its own namespace, under seccomp filters.
func checkConfined(t *testing.T, pid, uid int) {
	t.Helper()
	st := procStatus(t, pid)
	if f := strings.Fields(st["Uid"]); len(f) != 4 || f[0] != strconv.Itoa(uid) || f[1] != f[0] || f[2] != f[0] {
		t.Errorf("VMM %d Uid %q, want %d", pid, st["Uid"], uid)
	}
	if f := strings.Fields(st["Gid"]); len(f) != 4 || f[0] != strconv.Itoa(uid) {
		t.Errorf("VMM %d Gid %q, want %d", pid, st["Gid"], uid)
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"} {
		if st[k] != "0000000000000000" {
			t.Errorf("VMM %d %s = %s, want 0", pid, k, st[k])
		}
	}
	if st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
		t.Errorf("VMM %d Seccomp %q NoNewPrivs %q, want 2 and 1", pid, st["Seccomp"], st["NoNewPrivs"])
	}
	if f := strings.Fields(st["NSpid"]); len(f) != 2 || f[1] != "1" {
		t.Errorf("VMM %d NSpid %q, want PID 1 of its own namespace", pid, st["NSpid"])
	}
}

// Every VMM of a jailed pool, the template boot's, the warm clones' and
// the leased one's, runs jailed as a uid of its own; the agent answers
// through the vsock socket inside the chroot; a release frees the uid and
// removes the chroot.
func TestJailedTemplateAndClonesRunEachAsTheirOwnUID(t *testing.T) {
	s, _ := jailedPool(t, false)
	ctx := context.Background()
	agentTemplate(t, s.client, "jailed", 2)
	s.waitWarm(t, "jailed", 2)
	l, err := s.client.Acquire(ctx, "jailed", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	runEcho(t, l, "jailed")
	s.waitWarm(t, "jailed", 2)
	vms := jailedVMs(s)
	if len(vms) != 3 {
		t.Fatalf("%d jailed VMMs, want 3: %+v", len(vms), vms)
	}
	uids := map[int]bool{}
	for id, v := range vms {
		if uids[v.uid] || v.uid < int(testUIDs.First) || v.uid > int(testUIDs.Last) {
			t.Errorf("VM %s: uid %d (taken: %v)", id, v.uid, uids)
		}
		uids[v.uid] = true
		if id == l.ID {
			checkConfined(t, v.pid, v.uid)
		}
		root := filepath.Join(v.dir, "root")
		if got := procRoot(t, v.pid); got != "/" {
			t.Errorf("VMM %d sees its root as %q", v.pid, got)
		}
		if _, err := os.Stat(filepath.Join(root, vmAPISock)); err != nil {
			t.Errorf("VM %s: no API socket in its chroot: %v", id, err)
		}
	}
	if !strings.HasPrefix(l.APISock, vms[l.ID].dir+"/root/") || !strings.HasPrefix(l.VsockUDS, vms[l.ID].dir+"/root/") {
		t.Errorf("lease sockets %s, %s: want them in the chroot %s", l.APISock, l.VsockUDS, vms[l.ID].dir)
	}
	if s.pool.uids.inUse() != 3 {
		t.Errorf("%d uids in use for 3 VMMs", s.pool.uids.inUse())
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the released VMM's chroot to go", func() bool {
		_, err := os.Stat(vms[l.ID].dir)
		return os.IsNotExist(err)
	})
	waitFor(t, "its uid to be freed", func() bool { return s.pool.uids.inUse() == 2 })
}

// procRoot is where process pid's root points, as the kernel names it
// from pid's own view ("/" in a chroot made by pivot_root).
func procRoot(t *testing.T, pid int) string {
	t.Helper()
	r, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/root")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A jailed VMM killed, volt-vmm or its volt-jailer, is reaped with the
// other, its uid freed and its chroot removed, and the pool replaces it.
func TestJailedVMMKilledIsReapedAndItsUIDAndChrootFreed(t *testing.T) {
	s, _ := jailedPool(t, false)
	s.probeTemplate(t, "probe", 1)
	for i, which := range []string{"volt-vmm", "volt-jailer"} {
		t.Run(which, func(t *testing.T) { testJailedKill(t, s, which == "volt-jailer", uint64(i+1)) })
	}
}

func testJailedKill(t *testing.T, s *served, supervisor bool, deaths uint64) {
	s.waitWarm(t, "probe", 1)
	var victim jailedVM
	for _, v := range jailedVMs(s) {
		victim = v
	}
	target := victim.pid
	if supervisor {
		target = victim.supervisor
	}
	if err := unix.Kill(target, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the death to be counted", func() bool { return s.status(t, "probe").Deaths == deaths })
	waitFor(t, "the chroot to go", func() bool {
		_, err := os.Stat(victim.dir)
		return os.IsNotExist(err)
	})
	s.waitWarm(t, "probe", 1)
	waitFor(t, "one uid in use", func() bool { return s.pool.uids.inUse() == 1 })
	for _, pid := range []int{victim.pid, victim.supervisor} {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != unix.ECHILD {
			t.Errorf("wait4 %d: %v, want ECHILD (reaped, or never ours)", pid, err)
		}
		if alive(pid) {
			t.Errorf("process %d of the killed VMM is alive", pid)
		}
	}
	for _, v := range jailedVMs(s) {
		if v.pid == victim.pid || v.dir == victim.dir {
			t.Errorf("the killed VMM is still listed: %+v", v)
		}
	}
}

// A jailed pool with its templates in the CAS: clones map the chunks
// through a read-only view of the store, and the pool leases the manifest
// for each (their own leases are private to their chroots). Removing the
// template while a clone is leased keeps the chunks until it is released.
func TestJailedClonesOfACASTemplate(t *testing.T) {
	s, st := jailedPool(t, true)
	ctx := context.Background()
	agentTemplate(t, s.client, "jcas", 1)
	s.waitWarm(t, "jcas", 1)
	_, chunks := templateChunks(t, s, st, "jcas")
	l, err := s.client.Acquire(ctx, "jcas", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	runEcho(t, l, "jcas")
	if !mapsChunksIn(t, l.PID, "/cas/chunks/") {
		t.Errorf("the jailed clone %d maps no chunk of /cas", l.PID)
	}
	if err := s.client.RemoveTemplate(ctx, "jcas"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GC(ctx, cas.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := os.Stat(c); err != nil {
			t.Errorf("GC took chunk %s of a running jailed clone: %v", filepath.Base(c), err)
		}
	}
	runEcho(t, l, "still")
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the clone to exit", func() bool { return !alive(l.PID) })
	waitFor(t, "the pool's lease to go", func() bool {
		ls, err := st.Leases()
		live := 0
		for _, x := range ls {
			if x.Alive {
				live++
			}
		}
		return err == nil && live == 0
	})
	if _, err := st.GC(ctx, cas.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := os.Stat(c); !os.IsNotExist(err) {
			t.Errorf("chunk %s survived the GC after the release: %v", filepath.Base(c), err)
		}
	}
}

func mapsChunksIn(t *testing.T, pid int, prefix string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " "+prefix)
}

// Jailed clones of a template with a network: each in a namespace of its
// own holding the snapshot's TAP, owned by the VMM's uid so that the
// unprivileged volt-vmm attaches to it; nothing on the host.
func TestJailedNetworkClonesEachHoldTheirOwnTAP(t *testing.T) {
	s, _ := jailedPool(t, false)
	_, kernel, _ := fixture(t)
	ctx := context.Background()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "jnet", Kernel: kernel, MemoryMiB: 64, Warm: 2,
		Network: &pc.Network{HostDevName: "vjtap1", GuestMAC: "06:00:ac:10:00:03"}}); err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "jnet", 2)
	seen := map[string]bool{}
	for _, v := range jailedVMs(s) {
		ns, _ := os.Readlink("/proc/" + itoa(v.pid) + "/ns/net")
		if seen[ns] {
			t.Errorf("VMM %d shares its namespace", v.pid)
		}
		seen[ns] = true
		if !tapIn(t, v.pid, "vjtap1") || !holdsTAP(v.pid, "vjtap1") {
			t.Errorf("VMM %d: vjtap1 up %v, held %v", v.pid, tapIn(t, v.pid, "vjtap1"), holdsTAP(v.pid, "vjtap1"))
		}
	}
	if len(seen) != 2 {
		t.Errorf("%d namespaces for 2 VMMs", len(seen))
	}
	if _, err := os.Stat("/sys/class/net/vjtap1"); !os.IsNotExist(err) {
		t.Errorf("a TAP vjtap1 exists on the host: %v", err)
	}
}

// A jailed pool's daemon (templates in the CAS) killed and restarted: the
// live lease's jailed VMM is adopted (uid kept, chroot kept, its memory
// leased again, still answering), the warm ones are ended and their
// chroots removed.
func TestJailedDaemonRestartAdoptsItsVMMs(t *testing.T) {
	requireRoot(t)
	vmm, _, voltpool := fixture(t)
	snapTool, jailer := tools(t)
	if !probeHasAgent(t) {
		t.Skip("skipping: the probe guest built here has no vsock agent (probe.agent)")
	}
	dir := shortDir(t)
	socket, state := filepath.Join(dir, "pool.sock"), filepath.Join(dir, "s")
	store := filepath.Join(dir, "cas")
	args := []string{"--jail", "--jailer", jailer, "--volt-snapshot", snapTool, "--jail-uid-range", testUIDs.String(), "--store", store}
	ctx := context.Background()
	d := startDaemon(t, voltpool, vmm, socket, state, args...)
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Signal(os.Interrupt)
			d.cmd.Wait()
		}
		assertNoVMMs(t, state)
		if ents, _ := os.ReadDir(filepath.Join(state, "jail", "volt-vmm")); len(ents) != 0 {
			t.Errorf("%d chroots left", len(ents))
		}
	})
	agentTemplate(t, d.client, "jr", 2)
	waitFor(t, "2 warm", func() bool {
		st, err := d.client.Status(ctx)
		return err == nil && len(st.Templates) == 1 && st.Templates[0].Warm == 2 && st.Templates[0].Starting == 0
	})
	l, err := d.client.Acquire(ctx, "jr", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 warm again", func() bool {
		st, err := d.client.Status(ctx)
		return err == nil && st.Templates[0].Warm == 2 && st.Templates[0].Starting == 0
	})
	vms, err := d.client.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	uid := procStatus(t, l.PID)["Uid"]
	d.kill(t)
	if !alive(l.PID) {
		t.Fatal("the jailed VMM died with the daemon")
	}
	d = startDaemon(t, voltpool, vmm, socket, state, args...)
	got, err := d.client.Lease(ctx, l.ID)
	if err != nil || got.PID != l.PID || got.VsockUDS != l.VsockUDS {
		t.Fatalf("lease after restart %+v %v, before %+v", got, err, l)
	}
	if procStatus(t, l.PID)["Uid"] != uid {
		t.Errorf("the adopted VMM's uid changed")
	}
	runEcho(t, got, "adopted")

	for _, v := range vms {
		if v.ID != l.ID {
			waitFor(t, "the old warm jailed VMMs to be ended", func() bool { return !alive(v.PID) })
		}
	}
	waitFor(t, "2 warm under the new daemon", func() bool {
		st, err := d.client.Status(ctx)
		return err == nil && st.Templates[0].Warm == 2 && st.Templates[0].Starting == 0
	})
	if ents, _ := os.ReadDir(filepath.Join(state, "jail", "volt-vmm")); len(ents) != 3 {
		t.Errorf("%d chroots for 3 VMMs after the restart", len(ents))
	}
	// The new daemon holds a lease on the memory of each of its three
	// jailed VMMs, the adopted one's taken again (the old daemon's died
	// with it).
	st, err := cas.OpenExisting(store)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new daemon's leases on its 3 VMMs' memory", func() bool {
		ls, _ := st.Leases()
		n := 0
		for _, x := range ls {
			if x.Alive && x.Record.PID == d.cmd.Process.Pid {
				n++
			}
		}
		return n == 3
	})
	// The new warm VMMs took no uid the adopted one holds.
	nv, _ := d.client.VMs(ctx)
	for _, v := range nv {
		if v.ID != l.ID && procStatus(t, v.PID)["Uid"] == uid {
			t.Errorf("warm VMM %d runs as the adopted VMM's uid %s", v.PID, uid)
		}
	}
	if err := d.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the adopted VMM to stop", func() bool { return !alive(l.PID) })
}

// Acquire/release cycles of a jailed pool with its templates in the CAS
// and a network leak nothing: at rest, as many uids, chroots, volt-jailer
// processes, network namespaces and CAS leases as warm VMMs, and the
// daemon's descriptors, threads and goroutines do not grow.
func TestJailedCyclesLeakNothing(t *testing.T) {
	cycles := 400
	if testing.Short() {
		cycles = 100
	}
	const warm = 2
	s, st := jailedPool(t, true)
	_, kernel, _ := fixture(t)
	ctx := context.Background()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "net", Kernel: kernel, MemoryMiB: 64,
		Warm: warm, Network: &pc.Network{HostDevName: "vjtap0"}}); err != nil {
		t.Fatal(err)
	}
	type held struct{ fds, threads, goroutines, uids, chroots, jailers, netns, leases, mounts int }
	base := s.pool.cfg.Jail.ChrootBase
	settle := func() held {
		s.waitWarm(t, "net", warm)
		waitFor(t, "released VMMs to be reaped", func() bool {
			return len(s.pool.VMs()) == warm && len(strayJailers(base)) == warm && s.pool.uids.inUse() == warm
		})
		s.client.Close()
		time.Sleep(50 * time.Millisecond)
		r := measure(s.state)
		h := held{fds: r.fds, threads: r.threads, goroutines: r.goroutines, mounts: r.mounts, uids: s.pool.uids.inUse(), jailers: len(strayJailers(base))}
		h.chroots = countDir(filepath.Join(base, "volt-vmm"))
		netns := map[string]bool{}
		for _, v := range s.pool.VMs() {
			if ns, err := os.Readlink("/proc/" + itoa(v.PID) + "/ns/net"); err == nil {
				netns[ns] = true
			}
		}
		h.netns = len(netns)
		ls, _ := st.Leases()
		for _, l := range ls {
			if l.Alive {
				h.leases++
			}
		}
		return h
	}
	var mid held
	for i := 1; i <= cycles; i++ {
		l, err := s.client.Acquire(ctx, "net", 30*time.Second)
		if err != nil {
			t.Fatalf("cycle %d: acquire: %v", i, err)
		}
		if err := s.client.Release(ctx, l.ID); err != nil {
			t.Fatalf("cycle %d: release: %v", i, err)
		}
		if i == cycles/2 {
			mid = settle()
		}
	}
	end := settle()
	t.Logf("midpoint %+v, end %+v", mid, end)
	if end.fds > mid.fds || end.goroutines > mid.goroutines || end.threads > mid.threads+4 || end.mounts > mid.mounts {
		t.Errorf("the daemon grew: midpoint %+v, end %+v", mid, end)
	}
	for what, n := range map[string]int{"uids": end.uids, "chroots": end.chroots, "volt-jailers": end.jailers, "network namespaces": end.netns, "CAS leases": end.leases} {
		if n != warm {
			t.Errorf("at rest: %d %s for %d warm VMMs", n, what, warm)
		}
	}
}

// A jailed VMM that a killed daemon left without a record (its volt-jailer
// runs with this pool's chroot base) is killed by the next daemon, and its
// chroot removed.
func TestRestartKillsStrayJailedVMMs(t *testing.T) {
	requireRoot(t)
	vmm, _, voltpool := fixture(t)
	snapTool, jailer := tools(t)
	dir := shortDir(t)
	socket, state := filepath.Join(dir, "pool.sock"), filepath.Join(dir, "s")
	base := filepath.Join(state, "jail")
	if err := os.MkdirAll(base, 0o750); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(jailer, "--id", "0000000000000000", "--exec-file", vmm, "--uid", strconv.Itoa(int(testUIDs.First)),
		"--gid", strconv.Itoa(int(testUIDs.First)), "--chroot-base-dir", base, "--", "--api-sock", "/api.sock", "--console", "none")
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	chroot := filepath.Join(base, "volt-vmm", "0000000000000000")
	waitFor(t, "the stray jailed VMM's socket", func() bool {
		_, err := os.Stat(filepath.Join(chroot, "root", "api.sock"))
		return err == nil
	})
	vmmPID := childrenOf(cmd.Process.Pid)
	d := startDaemon(t, voltpool, vmm, socket, state, "--jail", "--jailer", jailer, "--volt-snapshot", snapTool, "--jail-uid-range", testUIDs.String())
	defer func() {
		d.cmd.Process.Signal(os.Interrupt)
		d.cmd.Wait()
	}()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the stray volt-jailer was not ended")
	}
	for _, pid := range vmmPID {
		if alive(pid) {
			t.Errorf("the stray jailed volt-vmm %d is alive", pid)
		}
	}
	if _, err := os.Stat(chroot); !os.IsNotExist(err) {
		t.Errorf("the stray's chroot: %v", err)
	}
}
