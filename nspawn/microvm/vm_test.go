package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/guest/rootfs"
	"github.com/voltvmm/volt/nspawn"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
)

// The test binary is both supervisors: the runtimes start it with this
// variable naming the kind, as volt starts "volt vm _supervise".
const superviseEnv = "VOLT_MICROVM_TEST_SUPERVISE"

func TestMain(m *testing.M) {
	switch os.Getenv(superviseEnv) {
	case "vm", "container":
		args := os.Args[1:]
		if len(args) != 3 || args[0] != "--state-dir" {
			fmt.Fprintf(os.Stderr, "supervisor: bad arguments %q\n", args)
			os.Exit(2)
		}
		if os.Getenv(superviseEnv) == "vm" {
			os.Exit(Supervise(context.Background(), SuperviseConfig{StateRoot: args[1], Name: args[2], Stderr: os.Stderr}))
		}
		os.Exit(nspawn.Supervise(context.Background(), nspawn.SuperviseConfig{StateRoot: args[1], Name: args[2], Stderr: os.Stderr}))
	}
	os.Exit(m.Run())
}

// repoFile finds a file of the repository from this package's directory.
func repoFile(rel string) string { return filepath.Join("..", "..", rel) }

// guestInputs finds what a VM test needs, or skips: /dev/kvm, the guest
// kernel and volt-init (scripts/setup builds them into build/guest), a
// static busybox, root, and systemd-nspawn for the container beside it.
func guestInputs(t *testing.T) (kernel, init string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm")
	}
	if _, err := nspawn.FindNspawn(); err != nil {
		t.Skip(err)
	}
	kernel, _ = filepath.Abs(repoFile("build/guest/vmlinux"))
	init, _ = filepath.Abs(repoFile("build/guest/volt-init"))
	for _, p := range []string{kernel, init, rootfs.DefaultBusybox} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s: %v (run scripts/setup)", p, err)
		}
	}
	return kernel, init
}

// buildVMM builds volt-vmm from this tree into dir.
func buildVMM(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "volt-vmm")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "../../cmd/volt-vmm")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build volt-vmm: %v\n%s", err, b)
	}
	return out
}

// guestProfile is explicit configuration; on our nested, software-assisted
// KVM hosts (kvm_pvm) the test says so itself, product code never does.
func guestProfile() string {
	if p := os.Getenv("VOLT_GUEST_PROFILE"); p != "" {
		return p
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return "nested-pvm"
	}
	return ""
}

type world struct {
	store *cas.Store
	vms   *Runtime
	ctrs  *nspawn.Runtime
	vmm   string
}

func newWorld(t *testing.T, init string) *world {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	tr, err := rootfs.NewTree(context.Background(), rootfs.Options{Init: init, Busybox: rootfs.DefaultBusybox})
	if err != nil {
		t.Skip(err)
	}
	if _, err := rootfs.Stage(tree, tr); err != nil {
		t.Fatal(err)
	}
	s, err := cas.Open(filepath.Join(dir, "cas"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.Import(context.Background(), s, "busybox", image.Source{Dir: tree}, image.ImportOptions{SizeMiB: 48}); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	state := filepath.Join(dir, "state")
	w := &world{store: s, vmm: buildVMM(t, dir)}
	w.vms = NewRuntime(state, s.Dir(), &instance.Supervisor{}, []string{exe})
	w.vms.SupervisorEnv = []string{superviseEnv + "=vm"}
	w.ctrs = nspawn.NewRuntime(state, s.Dir(), &instance.Supervisor{}, []string{exe})
	w.ctrs.SupervisorEnv = []string{superviseEnv + "=container"}
	t.Cleanup(func() {
		ctx := context.Background()
		for _, set := range []*instance.Set{&w.vms.Set, &w.ctrs.Set} {
			names, _ := set.Names()
			for _, n := range names {
				if err := set.Remove(ctx, n, true, 2*time.Second); err != nil {
					t.Errorf("cleanup %s %s: %v", set.Kind, n, err)
				}
			}
		}
	})
	return w
}

func waitState(t *testing.T, set *instance.Set, name string, done func(instance.State) bool, timeout time.Duration) instance.Status {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		d, err := set.Existing(name)
		if err != nil {
			t.Fatal(err)
		}
		st := d.Observe(ctx, set.Manager)
		alive, _ := d.SupervisorAlive()
		if done(st.State) && (st.State.Live() || !alive) {
			return st
		}
		if time.Now().After(deadline) {
			var log bytes.Buffer
			set.Logs(ctx, name, false, &log)
			t.Fatalf("%s %s is %s after %v:\n%s", set.Kind, name, st.State, timeout, lastLines(log.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func logOf(set *instance.Set, name string) string {
	var b bytes.Buffer
	set.Logs(context.Background(), name, false, &b)
	return b.String()
}

var (
	sumLine   = regexp.MustCompile(`sum ([0-9a-f]{32})`)
	vmSumLine = regexp.MustCompile(`(?m)^vm sum [0-9a-f]{32}\r?$`)
)

// One image, imported once, runs as a VM and as a container at the same
// time; both read the same chunks of the store (its stored bytes do not
// move; each instance has only its own small overlay), each one's writes
// stay its own, and the VM's writes become an image a container sees.
func TestOneImageRunsAsAVMAndAContainerAtOnce(t *testing.T) {
	kernel, init := guestInputs(t)
	w := newWorld(t, init)
	ctx := context.Background()
	before, err := w.store.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm := Spec{Name: "vm1", Image: "busybox", Kernel: kernel, MemoryBytes: 256 << 20, CPUs: 1, GuestProfile: guestProfile(),
		VMM:     w.vmm,
		Command: []string{"/bin/sh", "-c", "echo vm sum $(md5sum /bin/busybox | cut -c1-32); echo vm-wrote > /vm.txt; sync"}}
	start := time.Now()
	if _, err := w.vms.Run(ctx, vm); err != nil {
		t.Fatal(err)
	}
	// The container starts while the VM boots and stays up until the VM
	// has printed, so that both run at once.
	ctr := nspawn.Spec{Name: "c1", Image: "busybox", PrivateUsers: nspawn.UsersPick, Network: nspawn.Network{Mode: nspawn.NetNone},
		Command: []string{"/bin/sh", "-c", "echo ctr sum $(md5sum /bin/busybox | cut -c1-32); echo ctr-wrote > /ctr.txt; sync; sleep 600"}}
	if _, err := w.ctrs.Run(ctx, ctr); err != nil {
		t.Fatal(err)
	}
	during, _ := w.store.Usage(ctx)
	vmSt := waitState(t, &w.vms.Set, "vm1", func(s instance.State) bool { return true }, time.Second)
	ctrSt := waitState(t, &w.ctrs.Set, "c1", func(s instance.State) bool { return true }, time.Second)
	if vmSt.State != instance.StateRunning || ctrSt.State != instance.StateRunning {
		t.Fatalf("not both running: vm %s, container %s", vmSt.State, ctrSt.State)
	}
	if during.StoredBytes != before.StoredBytes || during.StoredChunks != before.StoredChunks {
		t.Errorf("starting a VM and a container stored %d bytes in the CAS (want 0: they share the image's chunks)", during.StoredBytes-before.StoredBytes)
	}
	// Two more names for the same manifest: the logical bytes grow by two
	// images, the stored bytes do not.
	if during.LogicalBytes < before.LogicalBytes+2*(48<<20) {
		t.Errorf("logical bytes %d -> %d: the instances' refs are missing", before.LogicalBytes, during.LogicalBytes)
	}
	t.Logf("store: logical %d -> %d bytes, stored %d -> %d bytes", before.LogicalBytes, during.LogicalBytes, before.StoredBytes, during.StoredBytes)

	// Wait for the VM's output (a Linux boot: a minute or two here); its
	// line, not the kernel's command line, which holds the command.
	deadline := time.Now().Add(8 * time.Minute)
	for !vmSumLine.MatchString(logOf(&w.vms.Set, "vm1")) {
		if time.Now().After(deadline) {
			t.Fatalf("no output from the VM after 8 min:\n%s", lastLines(logOf(&w.vms.Set, "vm1"), 30))
		}
		if d, _ := w.vms.Existing("vm1"); !d.Observe(ctx, nil).State.Live() {
			t.Fatalf("the VM stopped without its output:\n%s", lastLines(logOf(&w.vms.Set, "vm1"), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("VM start to its output: %v", time.Since(start).Round(time.Millisecond))
	ctrSt = waitState(t, &w.ctrs.Set, "c1", func(s instance.State) bool { return true }, time.Second)
	if ctrSt.State != instance.StateRunning {
		t.Errorf("the container was not running when the VM printed: %s", ctrSt.State)
	}
	vmSt = waitState(t, &w.vms.Set, "vm1", func(s instance.State) bool { return !s.Live() }, 3*time.Minute)
	if vmSt.State != instance.StateExited || vmSt.Record.ExitCode == nil || *vmSt.Record.ExitCode != 0 {
		t.Errorf("VM: %s %v %s\n%s", vmSt.State, vmSt.Record.ExitCode, vmSt.Detail, lastLines(logOf(&w.vms.Set, "vm1"), 20))
	}
	vs := sumLine.FindStringSubmatch(logOf(&w.vms.Set, "vm1"))
	cs := sumLine.FindStringSubmatch(logOf(&w.ctrs.Set, "c1"))
	if vs == nil || cs == nil || vs[1] != cs[1] {
		t.Errorf("the VM and the container read different busybox bytes: %v %v", vs, cs)
	}
	if _, err := w.ctrs.Stop(ctx, "c1", time.Second); err != nil {
		t.Fatal(err)
	}
	after, _ := w.store.Usage(ctx)
	if after.StoredBytes != before.StoredBytes {
		t.Errorf("running both stored %d bytes in the CAS", after.StoredBytes-before.StoredBytes)
	}
	for _, d := range []instance.Dir{mustDir(t, &w.vms.Set, "vm1"), mustDir(t, &w.ctrs.Set, "c1")} {
		vi, err := volume.ReadInfo(d.VolumePath())
		if err != nil {
			t.Fatal(err)
		}
		if vi.WrittenBlocks == 0 || vi.OverlayOnDisk > 8<<20 {
			t.Errorf("%s %s: %d blocks, %d bytes in its overlay", d.Kind, d.Name, vi.WrittenBlocks, vi.OverlayOnDisk)
		}
		t.Logf("%s %s: its own overlay holds %d KiB", d.Kind, d.Name, vi.OverlayOnDisk>>10)
	}

	// The VM's writes become an image; a container of it sees them, and
	// not the first container's.
	if _, err := nspawn.CommitInstance(ctx, mustDir(t, &w.vms.Set, "vm1"), w.store.Dir(), nil, "busybox-vm", false); err != nil {
		t.Fatal(err)
	}
	c2 := ctr
	c2.Name, c2.Image, c2.Command = "c2", "busybox-vm", []string{"/bin/sh", "-c", "cat /vm.txt; test -e /ctr.txt && echo ctr-file-leaked || echo no-ctr-file"}
	if _, err := w.ctrs.Run(ctx, c2); err != nil {
		t.Fatal(err)
	}
	waitState(t, &w.ctrs.Set, "c2", func(s instance.State) bool { return !s.Live() }, time.Minute)
	if log := logOf(&w.ctrs.Set, "c2"); !strings.Contains(log, "vm-wrote") || !strings.Contains(log, "no-ctr-file") {
		t.Errorf("a container of the VM's commit:\n%s", log)
	}
}

func mustDir(t *testing.T, set *instance.Set, name string) instance.Dir {
	t.Helper()
	d, err := set.Existing(name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A VM is stopped in order (volt-vmm exits 4, "stopped by a signal"), and
// one whose supervisor is SIGKILLed takes its VMM with it and shows as
// dead; both right after they start, so no guest boot is waited for.
func TestVMStopAndSupervisorCrash(t *testing.T) {
	kernel, init := guestInputs(t)
	w := newWorld(t, init)
	ctx := context.Background()
	spec := Spec{Name: "stopme", Image: "busybox", Kernel: kernel, MemoryBytes: 128 << 20, CPUs: 1, GuestProfile: guestProfile(),
		VMM: w.vmm, Command: []string{"/bin/sleep", "600"}}
	if _, err := w.vms.Run(ctx, spec); err != nil {
		t.Fatal(err)
	}
	st, err := w.vms.Stop(ctx, "stopme", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != instance.StateExited || st.Record.ExitCode == nil || *st.Record.ExitCode != 4 {
		t.Errorf("stop: %s %v %s", st.State, st.Record.ExitCode, st.Detail)
	}
	if _, err := w.vms.Run(ctx, spec); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("run over a stopped VM's name: %v", err)
	}

	spec.Name = "crash"
	if _, err := w.vms.Run(ctx, spec); err != nil {
		t.Fatal(err)
	}
	d := mustDir(t, &w.vms.Set, "crash")
	rec, _ := d.ReadRecord()
	if !rec.Payload.Alive() {
		t.Fatal("no volt-vmm recorded")
	}
	if err := rec.Supervisor.Signal(9); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rec.Payload.Alive() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if rec.Payload.Alive() {
		t.Error("volt-vmm outlived its supervisor")
	}
	st = waitState(t, &w.vms.Set, "crash", func(s instance.State) bool { return s == instance.StateDead }, 10*time.Second)
	if !strings.Contains(st.Detail, "died without recording") {
		t.Errorf("dead VM's detail: %q", st.Detail)
	}
	if _, err := w.vms.Stop(ctx, "crash", time.Second); err == nil {
		t.Error("stopping a dead VM succeeded")
	}
	if err := w.vms.Remove(ctx, "crash", false, time.Second); err != nil {
		t.Errorf("rm of a dead VM: %v", err)
	}
}
