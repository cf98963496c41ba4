package microvm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/internal/testbin"
	"github.com/voltvmm/volt/internal/unixhttp"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
)

// probeInputs finds what a probe VM needs, or skips: root, /dev/kvm and
// the probe guest ($VOLT_PROBE, else built into a temporary directory).
func probeInputs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm")
	}
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Skip(err)
	}
	return elf
}

// A jailed VM (the probe guest over a CAS volume) boots under volt-jailer:
// its volt-vmm runs as the uid volt picked, with no capability, PID 1 of
// its own PID namespace, its root the chroot, which holds the kernel, the
// volume, the store's view and the API and vsock sockets. A second jailed
// VM gets another uid. The guest's writes to its disk are in the volume
// after the stop; stop gives the volume back to root and removes the
// chroot; a jailed VM whose supervisor was SIGKILLed dies with it, and rm
// removes the chroot it left.
func TestJailedVMRunsUnprivilegedInItsChroot(t *testing.T) {
	elf := probeInputs(t)
	vmm := testbin.Build(t, "./cmd/volt-vmm")
	jailer := testbin.Build(t, "./cmd/volt-jailer")
	// Short paths: the sockets in the chroot must fit sun_path.
	dir, err := os.MkdirTemp("", "vj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte("hello\n"), 0o644)
	store, err := cas.Open(filepath.Join(dir, "cas"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.Import(ctx, store, "img", image.Source{Dir: tree}, image.ImportOptions{SizeMiB: 16}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	rt := NewRuntime(filepath.Join(dir, "st"), store.Dir(), &instance.Supervisor{}, []string{exe})
	rt.SupervisorEnv = []string{superviseEnv + "=vm"}
	t.Cleanup(func() {
		names, _ := rt.Names()
		for _, n := range names {
			if err := rt.Remove(context.Background(), n, true, 2*time.Second); err != nil {
				t.Errorf("cleanup %s: %v", n, err)
			}
		}
	})
	spec := func(name string) Spec {
		return Spec{Name: name, Image: "img", Kernel: elf, MemoryBytes: 32 << 20, CPUs: 1, Cmdline: "probe.agent", VMM: vmm,
			VMMFlags: []string{"--vsock=cid=3,uds=/run/v.sock"}, Jail: &Jail{Jailer: jailer}}
	}

	if _, err := rt.Run(ctx, spec("j1")); err != nil {
		t.Fatal(err)
	}
	in, err := rt.Inspect(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if in.State != instance.StateRunning || in.Jail == nil || in.Jail.UID < DefaultUIDRange.First || in.Jail.UID > DefaultUIDRange.Last {
		t.Fatalf("j1: %s, jail %+v", in.State, in.Jail)
	}
	uid, chroot := in.Jail.UID, in.Jail.Chroot
	pid := in.Record.Payload.PID
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"Uid:", "Gid:"} {
		ids, err := statusIDs(string(status), key)
		if err != nil || slices.ContainsFunc(ids, func(id int) bool { return id != uid }) {
			t.Errorf("volt-vmm %d %s %v (%v), want %d throughout", pid, key, ids, err, uid)
		}
	}
	if !strings.Contains(string(status), "\nCapEff:\t0000000000000000\n") || !isNSPid1(string(status)) {
		t.Errorf("volt-vmm %d keeps capabilities or is not PID 1 of its namespace:\n%s", pid, status)
	}
	// Its / is the chroot, which shows nothing of the host but what the
	// VM needs.
	rootFI, err1 := os.Stat("/proc/" + strconv.Itoa(pid) + "/root/")
	chrootFI, err2 := os.Stat(chroot)
	if err1 != nil || err2 != nil || !os.SameFile(rootFI, chrootFI) {
		t.Errorf("volt-vmm's root is not %s (%v, %v)", chroot, err1, err2)
	}
	ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/root/")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"cas", "dev", "kernel", "proc", "run", "volt-vmm", "volume"}; !slices.Equal(names, want) {
		t.Errorf("the chroot holds %v, want %v", names, want)
	}

	// The API answers on the host at the path ls gives.
	api := unixhttp.New(in.APISock, 1, 1<<16)
	a, err := api.Do(ctx, "GET", "/", nil)
	api.Close()
	if err != nil || !a.OK() || !bytes.Contains(a.Body, []byte(`"id":"j1"`)) {
		t.Errorf("GET / on %s: %v %+v %s", in.APISock, err, a, a.Body)
	}

	// The guest writes its disk through the jailed VMM.
	vsock := filepath.Join(chroot, "run", "v.sock")
	if out := agentRun(t, vsock, "blk", "write", "8", "171", "8"); out != "blk write 8 8 ok" {
		t.Errorf("blk write: %q", out)
	}
	if out := agentRun(t, vsock, "blk", "flush"); out != "blk flush ok" {
		t.Errorf("blk flush: %q", out)
	}

	// A second jailed VM, beside the first: a uid of its own; the first's
	// uid cannot be asked for.
	if _, err := rt.Run(ctx, spec("j2")); err != nil {
		t.Fatal(err)
	}
	in2, err := rt.Inspect(ctx, "j2")
	if err != nil || in2.Jail == nil || in2.Jail.UID == uid {
		t.Fatalf("j2: %+v %v (j1 has uid %d)", in2.Jail, err, uid)
	}
	s3 := spec("j3")
	s3.Jail.UID = uid
	if _, err := rt.Run(ctx, s3); err == nil || !strings.Contains(err.Error(), "VM j1's") {
		t.Errorf("a third VM with j1's uid: %v", err)
	}

	st, err := rt.Stop(ctx, "j1", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != instance.StateExited || st.Record.ExitCode == nil || *st.Record.ExitCode != 4 {
		t.Errorf("stop: %s %v %s\n%s", st.State, st.Record.ExitCode, st.Detail, logOf(&rt.Set, "j1"))
	}
	if _, err := os.Lstat(filepath.Dir(chroot)); !os.IsNotExist(err) {
		t.Errorf("the jail directory is still there after the stop: %v", err)
	}
	d := mustDir(t, &rt.Set, "j1")
	vents, _ := os.ReadDir(d.VolumePath())
	for _, e := range append(vents, nil) {
		p := d.VolumePath()
		if e != nil {
			p = filepath.Join(p, e.Name())
		}
		if fi, err := os.Lstat(p); err != nil || fileUID(fi) != 0 {
			t.Errorf("%s is not root's after the stop: %v", p, err)
		}
	}
	v, err := volume.Open(ctx, store, d.VolumePath())
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	_, err = v.ReadAt(got, 8*512)
	v.Close()
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{171}, 4096)) {
		t.Errorf("the guest's write is not in the volume after the stop: %v %x...", err, got[:16])
	}

	// j2's supervisor dies: its VMM goes with it (through the jailer),
	// ls says dead, and rm removes the chroot left behind.
	rec2 := in2.Record
	if err := rec2.Supervisor.Signal(9); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rec2.Payload.Alive() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if rec2.Payload.Alive() {
		t.Error("j2's volt-vmm outlived its supervisor")
	}
	waitState(t, &rt.Set, "j2", func(s instance.State) bool { return s == instance.StateDead }, 10*time.Second)
	if _, err := os.Lstat(in2.Jail.Chroot); err != nil {
		t.Errorf("j2's chroot was not left behind by its SIGKILLed supervisor (the test wants rm to remove it): %v", err)
	}
	for _, n := range []string{"j1", "j2"} {
		if err := rt.Remove(ctx, n, false, time.Second); err != nil {
			t.Errorf("rm %s: %v", n, err)
		}
	}
	if _, err := os.Lstat(filepath.Dir(in2.Jail.Chroot)); !os.IsNotExist(err) {
		t.Errorf("rm left j2's jail directory: %v", err)
	}
}

// agentRun runs one command of the probe's agent over the jailed VMM's
// vsock socket and returns its output, retrying the connection while the
// guest is not listening yet.
func agentRun(t *testing.T, uds string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		conn, err := agent.DialHybrid(ctx, uds, 10240)
		if err == nil {
			var c agent.Client
			res, err := c.Run(ctx, conn, agent.Request{Args: args})
			conn.Close()
			if err != nil {
				t.Fatalf("agent %q: %v", args, err)
			}
			return strings.TrimSpace(string(res.Stdout) + string(res.Stderr))
		}
		if ctx.Err() != nil {
			t.Fatalf("agent on %s: %v", uds, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isNSPid1 reports whether the NSpid line of a status text ends in 1.
func isNSPid1(status string) bool {
	for _, l := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) >= 2 && f[len(f)-1] == "1"
		}
	}
	return false
}

func fileUID(fi os.FileInfo) int {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return int(st.Uid)
}
