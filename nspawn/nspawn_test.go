package nspawn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/guest/rootfs"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
)

// The test binary is also the container supervisor: the runtime starts it
// with this variable set, as volt starts "volt container _supervise".
const superviseEnv = "VOLT_NSPAWN_TEST_SUPERVISE"

func TestMain(m *testing.M) {
	if os.Getenv(superviseEnv) == "1" {
		os.Exit(superviseMain(os.Args[1:]))
	}
	code := m.Run()
	if treeDir != "" {
		os.RemoveAll(filepath.Dir(treeDir))
	}
	os.Exit(code)
}

// superviseMain parses "--state-dir ROOT NAME" as volt's command does.
func superviseMain(args []string) int {
	if len(args) != 3 || args[0] != "--state-dir" {
		fmt.Fprintf(os.Stderr, "supervisor: bad arguments %q\n", args)
		return 2
	}
	return Supervise(context.Background(), SuperviseConfig{StateRoot: args[1], Name: args[2], Stderr: os.Stderr})
}

// requireContainers skips where containers cannot run: they need root,
// systemd-nspawn, FUSE and loop devices.
func requireContainers(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containers need root")
	}
	if _, err := FindNspawn(); err != nil {
		t.Skip(err)
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s: %v", p, err)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if _, err := os.Stat("/usr/sbin/mkfs.ext4"); err != nil {
			t.Skip("mkfs.ext4 missing (e2fsprogs)")
		}
	}
}

// fixture is a store with a busybox image and a runtime over a state root.
type fixture struct {
	store *cas.Store
	rt    *Runtime
	tree  string
}

var (
	treeOnce sync.Once
	treeDir  string
	treeErr  error
)

// busyboxTree stages a static busybox with its applets (and the victim
// program, for the security test) once per test binary.
func busyboxTree(t testing.TB) string {
	t.Helper()
	treeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "volt-nspawn-tree-*")
		if err != nil {
			treeErr = err
			return
		}
		treeDir = filepath.Join(dir, "tree")
		os.Mkdir(treeDir, 0o755)
		tr, err := rootfs.NewTree(context.Background(), rootfs.Options{Init: rootfs.DefaultBusybox, Busybox: rootfs.DefaultBusybox})
		if err != nil {
			treeErr = err
			return
		}
		if _, err := rootfs.Stage(treeDir, tr); err != nil {
			treeErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(treeDir, "bin", "victim"), "./testdata/victim")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			treeErr = fmt.Errorf("build the victim: %v: %s", err, out)
		}
	})
	if treeErr != nil {
		t.Skipf("busybox tree: %v (%s)", treeErr, rootfs.BusyboxHint)
	}
	return treeDir
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	requireContainers(t)
	tree := busyboxTree(t)
	dir := t.TempDir()
	s, err := cas.Open(filepath.Join(dir, "cas"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.Import(context.Background(), s, "busybox", image.Source{Dir: tree}, image.ImportOptions{SizeMiB: 48}); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rt := NewRuntime(filepath.Join(dir, "state"), s.Dir(), &instance.Supervisor{}, []string{exe})
	rt.SupervisorEnv = []string{superviseEnv + "=1"}
	f := &fixture{store: s, rt: rt, tree: tree}
	t.Cleanup(func() { f.cleanup(t) })
	return f
}

// cleanup stops and removes whatever a test left, and checks that nothing
// of ours outlives it: no supervisor, no cgroup, no loop device on our
// files.
func (f *fixture) cleanup(t *testing.T) {
	ctx := context.Background()
	infos, _ := f.rt.List(ctx)
	for _, in := range infos {
		if err := f.rt.Remove(ctx, in.Name, true, 2*time.Second); err != nil {
			t.Errorf("cleanup %s: %v", in.Name, err)
		}
		if in.Record.Supervisor.Alive() {
			t.Errorf("supervisor of %s still alive", in.Name)
		}
		for _, dir := range strings.Split(in.Record.Details["cgroups"], ",") {
			if dir == "" {
				continue
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgroup %s left behind", dir)
			}
		}
	}
	out, _ := exec.Command("losetup", "-a").Output()
	if bytes.Contains(out, []byte(f.rt.Root)) {
		t.Errorf("loop devices left on the state root:\n%s", out)
	}
}

func (f *fixture) spec(name string, cmd ...string) Spec {
	return Spec{Name: name, Image: "busybox", Command: cmd, PrivateUsers: UsersPick, Network: Network{Mode: NetNone}}
}

// runToEnd runs a container and waits until it stops, returning its log.
func (f *fixture) runToEnd(t *testing.T, s Spec) (Info, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.rt.Run(ctx, s); err != nil {
		t.Fatal(err)
	}
	return f.wait(t, s.Name, 60*time.Second)
}

func (f *fixture) wait(t *testing.T, name string, timeout time.Duration) (Info, string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		in, err := f.rt.Inspect(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := f.rt.Dir(name)
		if alive, _ := d.SupervisorAlive(); !in.State.Live() && !alive {
			var log bytes.Buffer
			f.rt.Logs(ctx, name, false, &log)
			return in, log.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %s after %v", name, in.State, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLog waits until the container's log holds text.
func (f *fixture) waitLog(t *testing.T, name, text string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var log bytes.Buffer
		f.rt.Logs(context.Background(), name, false, &log)
		if strings.Contains(log.String(), text) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q in the log after 30s:\n%s", name, text, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exitCode(in Info) int {
	if in.Record.ExitCode == nil {
		return -1
	}
	return *in.Record.ExitCode
}

func TestContainerRunsInAUserNamespaceWithNoNetworkAndFewCapabilities(t *testing.T) {
	f := newFixture(t)
	in, log := f.runToEnd(t, f.spec("userns", "/bin/sh", "-c",
		"echo uidmap $(cat /proc/self/uid_map); echo owner $(stat -c %u:%g /bin/busybox); grep CapEff /proc/self/status; echo ifaces $(ls /sys/class/net); id -u"))
	if in.State != instance.StateExited || exitCode(in) != 0 {
		t.Fatalf("%s %d: %s\n%s", in.State, exitCode(in), in.Detail, log)
	}
	fields := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 {
			fields[strings.TrimSuffix(f[0], ":")] = f[1:]
		}
	}
	um := fields["uidmap"]
	if len(um) != 3 || um[0] != "0" || um[1] == "0" || um[2] != "65536" {
		t.Errorf("uid_map %v: want root inside mapped to a non-zero 64 Ki range outside", um)
	}
	if o := fields["owner"]; len(o) != 1 || o[0] != "0:0" {
		t.Errorf("image files are owned by %v inside, want 0:0 (ID-mapped, not chowned)", o)
	}
	capEff, err := strconv.ParseUint(strings.Join(fields["CapEff"], ""), 16, 64)
	if err != nil {
		t.Fatalf("CapEff: %v", err)
	}
	for name, bit := range map[string]uint{"CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN, "CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN, "CAP_MKNOD": unix.CAP_MKNOD} {
		if capEff&(1<<bit) != 0 {
			t.Errorf("%s is effective inside (CapEff %x)", name, capEff)
		}
	}
	for name, bit := range map[string]uint{"CAP_CHOWN": unix.CAP_CHOWN, "CAP_SETUID": unix.CAP_SETUID, "CAP_KILL": unix.CAP_KILL} {
		if capEff&(1<<bit) == 0 {
			t.Errorf("%s was dropped but should stay (CapEff %x)", name, capEff)
		}
	}
	if ifs := fields["ifaces"]; len(ifs) != 1 || ifs[0] != "lo" {
		t.Errorf("interfaces %v, want only lo", ifs)
	}
	// The mapping is real: the shell's UID on the host is the range's base.
	if in.Record.Payload.PID == 0 {
		t.Error("no payload recorded")
	}
}

func TestContainerSeccompAndCapabilityProbes(t *testing.T) {
	f := newFixture(t)
	in, log := f.runToEnd(t, f.spec("victim", "/bin/victim"))
	if exitCode(in) != 0 {
		t.Fatalf("victim: %s %d\n%s", in.State, exitCode(in), log)
	}
	want := map[string]string{
		"keyctl":     "refused EPERM",
		"ptrace":     "refused EPERM",
		"modify_ldt": "refused EPERM",
		"mount":      "refused EPERM",
		"raw-socket": "refused EPERM",
		"getpid":     "allowed",
	}
	for probe, w := range want {
		if !strings.Contains(log, probe+" "+w+"\n") {
			t.Errorf("%s: want %q in the log:\n%s", probe, probe+" "+w, log)
		}
	}
}

// A container's writes land in its own overlay, the image does not change,
// and commit makes a new image holding them that a second container sees.
func TestContainerWritesStayInItsOverlayAndCommitMakesAnImage(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	before, err := f.store.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, log := f.runToEnd(t, f.spec("writer", "/bin/sh", "-c", "echo committed-data > /hello.txt; sync"))
	if exitCode(in) != 0 {
		t.Fatalf("writer: %s %d\n%s", in.State, exitCode(in), log)
	}
	d, _ := f.rt.Dir("writer")
	vi, err := volume.ReadInfo(d.VolumePath())
	if err != nil {
		t.Fatal(err)
	}
	if vi.WrittenBlocks == 0 {
		t.Fatal("the write is not in the container's overlay")
	}
	after, _ := f.store.Usage(ctx)
	if after.StoredBytes != before.StoredBytes {
		t.Errorf("running a container stored %d bytes in the CAS; its writes belong in its overlay", after.StoredBytes-before.StoredBytes)
	}
	// The image itself is unchanged.
	img := filepath.Join(t.TempDir(), "img")
	if err := f.store.ExportFile(ctx, image.Ref("busybox"), img, nil); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("debugfs", "-R", "cat /hello.txt", img).Output(); len(out) != 0 {
		t.Errorf("the image holds the container's file: %q", out)
	}

	res, err := f.rt.Commit(ctx, "writer", "busybox-hello", false)
	if err != nil {
		t.Fatal(err)
	}
	if res.ChangedChunks == 0 || res.ChangedChunks >= len(res.Manifest.Chunks)/2 {
		t.Errorf("commit changed %d of %d chunks", res.ChangedChunks, len(res.Manifest.Chunks))
	}
	if _, err := f.rt.Commit(ctx, "writer", "busybox-hello", false); !errors.Is(err, image.ErrExists) {
		t.Errorf("second commit to the same name: %v, want ErrExists", err)
	}
	committed, _ := f.store.Usage(ctx)
	if grew := committed.StoredBytes - before.StoredBytes; grew > int64(res.ChangedChunks)*image.DefaultChunkSize {
		t.Errorf("the commit stored %d bytes for %d changed chunks", grew, res.ChangedChunks)
	}
	s := f.spec("reader", "/bin/cat", "/hello.txt")
	s.Image = "busybox-hello"
	in, log = f.runToEnd(t, s)
	if exitCode(in) != 0 || !strings.Contains(log, "committed-data") {
		t.Errorf("a container of the committed image: %s %d\n%s", in.State, exitCode(in), log)
	}
	// A running container cannot be committed.
	if _, err := f.rt.Run(ctx, f.spec("busy", "/bin/sleep", "30")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Commit(ctx, "busy", "busy-image", false); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("commit of a running container: %v", err)
	}
}

func TestContainerBindMountsAndLimits(t *testing.T) {
	f := newFixture(t)
	data := t.TempDir()
	os.WriteFile(filepath.Join(data, "in.txt"), []byte("from-the-host\n"), 0o644)
	s := f.spec("binds", "/bin/sh", "-c", "cat /data/in.txt; echo x > /data/out.txt && echo wrote || echo refused")
	s.Binds = []Bind{{Source: data, Target: "/data", ReadOnly: true}}
	s.Limits = instance.Limits{MemoryBytes: 64 << 20, CPUs: 0.5}
	ctx := context.Background()
	if _, err := f.rt.Run(ctx, s); err != nil {
		t.Fatal(err)
	}
	// The limits are on the supervisor's cgroup while it runs... or were:
	// read them from the record's cgroups if still there.
	in, log := f.wait(t, "binds", 60*time.Second)
	if !strings.Contains(log, "from-the-host") || !strings.Contains(log, "refused") || strings.Contains(log, "wrote") {
		t.Errorf("read-only bind: %s %d\n%s", in.State, exitCode(in), log)
	}

	// Memory: 64 MiB of tmpfs pages are charged to the container and the
	// limit stops it well short of 128 MiB.
	s = f.spec("memory", "/bin/sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=128 2>&1; echo dd-status $?")
	s.Limits = instance.Limits{MemoryBytes: 48 << 20}
	if _, err := f.rt.Run(ctx, s); err != nil {
		t.Fatal(err)
	}
	d, _ := f.rt.Dir("memory")
	rec, _ := d.ReadRecord()
	for _, dir := range strings.Split(rec.Details["cgroups"], ",") {
		for _, file := range []string{"memory.limit_in_bytes", "memory.max"} {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil && strings.TrimSpace(string(b)) != strconv.Itoa(48<<20) {
				t.Errorf("%s/%s = %s, want %d", dir, file, b, 48<<20)
			}
		}
	}
	in, log = f.wait(t, "memory", 60*time.Second)
	if strings.Contains(log, "dd-status 0") {
		t.Errorf("128 MiB written under a 48 MiB limit: %s %d\n%s", in.State, exitCode(in), log)
	}
}

func TestContainerBadInputGetsClearErrors(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	fifo := filepath.Join(t.TempDir(), "fifo")
	unix.Mkfifo(fifo, 0o644)
	if _, err := f.rt.Run(ctx, f.spec("sleeper", "/bin/sleep", "60")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec func() Spec
		want string
	}{
		{"unknown image", func() Spec { s := f.spec("x", "/bin/true"); s.Image = "nope"; return s }, "unknown image \"nope\""},
		{"missing bind source", func() Spec {
			s := f.spec("x", "/bin/true")
			s.Binds = []Bind{{Source: "/nonexistent/dir", Target: "/data"}}
			return s
		}, "/nonexistent/dir: no such file"},
		{"bind of a FIFO", func() Spec { s := f.spec("x", "/bin/true"); s.Binds = []Bind{{Source: fifo, Target: "/f"}}; return s }, "a FIFO"},
		{"running name", func() Spec { return f.spec("sleeper", "/bin/true") }, "container sleeper is running"},
		{"no command", func() Spec { return f.spec("x") }, "no command"},
		{"bad name", func() Spec { return f.spec("a_b", "/bin/true") }, "invalid instance name"},
		{"missing bridge", func() Spec {
			s := f.spec("x", "/bin/true")
			s.Network = Network{Mode: NetBridge, Bridge: "voltnobr0"}
			return s
		}, "no such bridge"},
		{"bad private-users", func() Spec { s := f.spec("x", "/bin/true"); s.PrivateUsers = "maybe"; return s }, "--private-users"},
	} {
		_, err := f.rt.Run(ctx, tc.spec())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if names, _ := f.rt.Names(); len(names) != 1 {
		t.Errorf("failed runs left instances: %v", names)
	}
	// A command that does not exist: nspawn fails after the disk is up;
	// the container is recorded with the reason and its log says it.
	_, err := f.rt.Run(ctx, f.spec("nocmd", "/bin/does-not-exist"))
	in, log := f.wait(t, "nocmd", 30*time.Second)
	if err == nil && exitCode(in) == 0 {
		t.Errorf("a missing command succeeded: %s\n%s", in.State, log)
	}
	if !strings.Contains(log, "does-not-exist") {
		t.Errorf("the log does not name the missing command:\n%s", log)
	}
	if _, err := f.rt.Stop(ctx, "nocmd", time.Second); err == nil {
		t.Error("stopping a stopped container succeeded")
	}
	if err := f.rt.Remove(ctx, "sleeper", false, time.Second); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("removing a running container: %v", err)
	}
	if err := f.rt.Remove(ctx, "ghost", false, time.Second); !errors.Is(err, instance.ErrNotFound) {
		t.Errorf("removing a missing container: %v", err)
	}
}

// Stop reaches the command itself (its exit status is the container's),
// and a supervisor killed with SIGKILL leaves a container that ls reports
// truthfully and that stop then cleans up.
func TestContainerStopAndSupervisorCrash(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.rt.Run(ctx, f.spec("trap", "/bin/sh", "-c", "trap 'echo got-term; exit 7' TERM; echo started; while true; do sleep 0.1; done")); err != nil {
		t.Fatal(err)
	}
	f.waitLog(t, "trap", "started")
	st, err := f.rt.Stop(ctx, "trap", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in, log := f.wait(t, "trap", 10*time.Second)
	if st.State != instance.StateExited || exitCode(in) != 7 || !strings.Contains(log, "got-term") {
		t.Errorf("stop: %s exit %d\n%s", st.State, exitCode(in), log)
	}

	// A command that ignores SIGTERM is killed after the timeout.
	if _, err := f.rt.Run(ctx, f.spec("stubborn", "/bin/sh", "-c", "trap '' TERM; echo started; while true; do sleep 0.1; done")); err != nil {
		t.Fatal(err)
	}
	f.waitLog(t, "stubborn", "started")
	start := time.Now()
	if _, err := f.rt.Stop(ctx, "stubborn", time.Second); err != nil {
		t.Fatal(err)
	}
	if in, _ := f.wait(t, "stubborn", 10*time.Second); in.State != instance.StateExited || time.Since(start) > 20*time.Second {
		t.Errorf("stubborn: %s after %v", in.State, time.Since(start))
	}

	if _, err := f.rt.Run(ctx, f.spec("crash", "/bin/sleep", "1000")); err != nil {
		t.Fatal(err)
	}
	in, _ = f.rt.Inspect(ctx, "crash")
	if err := unix.Kill(in.Record.Supervisor.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for in.State == instance.StateRunning && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		in, _ = f.rt.Inspect(ctx, "crash")
	}
	if in.State != instance.StateOrphaned && in.State != instance.StateDead {
		t.Fatalf("after SIGKILL of its supervisor: %s (%s)", in.State, in.Detail)
	}
	st, err = f.rt.Stop(ctx, "crash", time.Second)
	if in.State == instance.StateOrphaned && (err != nil || st.State != instance.StateExited) {
		t.Errorf("stop of an orphan: %s, %v", st.State, err)
	}
	if pids := instance.CgroupProcs(strings.Split(in.Record.Details["cgroups"], ",")); len(pids) != 0 {
		t.Errorf("processes %v survive", pids)
	}
	if in, _ := f.rt.Inspect(ctx, "crash"); in.State.Live() {
		t.Errorf("after stop: %s", in.State)
	}
	// The name can be used again after rm.
	if err := f.rt.Remove(ctx, "crash", false, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Ref("container:crash"); !errors.Is(err, cas.ErrNotFound) {
		t.Errorf("rm left the instance's ref: %v", err)
	}
}
