package jailer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/internal/testbin"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

// The jail's second process is this test binary re-executed from
// /proc/self/exe, as volt-jailer re-executes itself.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ChildArg {
		os.Exit(Child())
	}
	os.Exit(m.Run())
}

func validConfig(t *testing.T) Config {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{ID: "vm-1", ExecFile: exe, UID: 10123, GID: 10123, ChrootBase: t.TempDir()}
}

func TestValidateRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"missing binary", func(c *Config) { c.ExecFile = "/nonexistent/volt-vmm" }, "no such file"},
		{"FIFO as binary", func(c *Config) { c.ExecFile = fifo }, "a FIFO"},
		{"directory as binary", func(c *Config) { c.ExecFile = dir }, "a directory"},
		{"device as binary", func(c *Config) { c.ExecFile = "/dev/null" }, "a character device"},
		{"not executable", func(c *Config) { c.ExecFile = plain }, "not executable"},
		{"relative binary", func(c *Config) { c.ExecFile = "bin/volt-vmm" }, "absolute"},
		{"no binary", func(c *Config) { c.ExecFile = "" }, "required"},
		{"root uid", func(c *Config) { c.UID = 0 }, "never 0"},
		{"root gid", func(c *Config) { c.GID = 0 }, "never 0"},
		{"huge uid", func(c *Config) { c.UID = 1 << 33 }, "out of range"},
		{"bad id", func(c *Config) { c.ID = "../etc" }, "--id"},
		{"long id", func(c *Config) { c.ID = strings.Repeat("a", 65) }, "--id"},
		{"chroot base /", func(c *Config) { c.ChrootBase = "/" }, "other than /"},
		{"chroot base relative", func(c *Config) { c.ChrootBase = "jail" }, "absolute"},
		{"chroot base a file", func(c *Config) { c.ChrootBase = plain }, "not a directory"},
		{"netns not a namespace", func(c *Config) { c.NetNS = plain }, "not a namespace"},
		{"netns missing", func(c *Config) { c.NetNS = "/nonexistent/netns" }, "no such file"},
		{"cgroup version 3", func(c *Config) { c.CgroupVersion = 3 }, "1 or 2"},
		{"unknown cgroup file", func(c *Config) { c.Cgroups = []CgroupSetting{{"memory.oom_control", "1"}} }, "not a file the jailer sets"},
		{"bad memory value", func(c *Config) { c.Cgroups = []CgroupSetting{{"memory.max", "lots"}} }, "bad value"},
		{"negative pids", func(c *Config) { c.Cgroups = []CgroupSetting{{"pids.max", "-5"}} }, "bad value"},
		{"bad cpu.max", func(c *Config) { c.Cgroups = []CgroupSetting{{"cpu.max", "half"}} }, "bad value"},
		{"v1 file under v2", func(c *Config) {
			c.CgroupVersion = 2
			c.Cgroups = []CgroupSetting{{"memory.limit_in_bytes", "1G"}}
		}, "not a file the jailer sets"},
		{"bad cpuset", func(c *Config) { c.Cgroups = []CgroupSetting{{"cpuset.cpus", "0-"}} }, "bad value"},
		{"parent cgroup escapes", func(c *Config) { c.ParentCgroup = "../../x" }, "relative path"},
		{"parent cgroup absolute", func(c *Config) { c.ParentCgroup = "/x" }, "relative path"},
		{"unknown rlimit", func(c *Config) { c.Limits = []Rlimit{{"core", 0}} }, "unknown resource"},
		{"bind a FIFO", func(c *Config) { c.Binds = []Bind{{Host: fifo, Jail: "/fifo"}} }, "a FIFO"},
		{"bind a char device", func(c *Config) { c.Binds = []Bind{{Host: "/dev/null", Jail: "/null"}} }, "a character device"},
		{"bind missing", func(c *Config) { c.Binds = []Bind{{Host: "/nonexistent", Jail: "/x"}} }, "no such file"},
		{"bind relative jail path", func(c *Config) { c.Binds = []Bind{{Host: plain, Jail: "x"}} }, "clean absolute"},
		{"bind escaping jail path", func(c *Config) { c.Binds = []Bind{{Host: plain, Jail: "/a/../../etc"}} }, "clean absolute"},
		{"bind onto /dev", func(c *Config) { c.Binds = []Bind{{Host: plain, Jail: "/dev/kvm"}} }, "jailer's own"},
		{"bind onto /proc", func(c *Config) { c.Binds = []Bind{{Host: plain, Jail: "/proc"}} }, "jailer's own"},
		{"bind twice", func(c *Config) { c.Binds = []Bind{{Host: plain, Jail: "/k"}, {Host: plain, Jail: "/k"}} }, "used twice"},
		{"bind onto the VMM", func(c *Config) { c.Binds = []Bind{{Host: plain, Jail: "/" + c.ExecName()}} }, "used twice"},
		{"--id in the VMM's args", func(c *Config) { c.Args = []string{"--id=x"} }, "passes --id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := validConfig(t)
			c.change(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, c.want)
			}
		})
	}
	cfg := validConfig(t)
	cfg.Cgroups = []CgroupSetting{{"memory.max", "256M"}, {"cpu.max", "50000 100000"}, {"pids.max", "64"}, {"memory.limit_in_bytes", "-1"}}
	cfg.Binds = []Bind{{Host: plain, Jail: "/disk.img", Writable: true}, {Host: dir, Jail: "/snap"}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("a good configuration is refused: %v", err)
	}
}

func TestParsers(t *testing.T) {
	if _, err := ParseID("no-such-user-volt", false); err == nil || !strings.Contains(err.Error(), "unknown user") {
		t.Errorf("unknown user: %v", err)
	}
	if _, err := ParseID("no-such-group-volt", true); err == nil || !strings.Contains(err.Error(), "unknown group") {
		t.Errorf("unknown group: %v", err)
	}
	if n, err := ParseID("nobody", false); err != nil || n != 65534 {
		t.Errorf("ParseID(nobody) = %d, %v", n, err)
	}
	if n, err := ParseID("123", false); err != nil || n != 123 {
		t.Errorf("ParseID(123) = %d, %v", n, err)
	}
	if _, err := ParseID("-1", false); err == nil {
		t.Error("ParseID(-1) accepted")
	}
	for _, bad := range []string{"fsize", "fsize=-1", "core=1", "no-file=lots"} {
		if _, err := ParseRlimit(bad); err == nil {
			t.Errorf("ParseRlimit(%q) accepted", bad)
		}
	}
	if l, err := ParseRlimit("no-file=1024"); err != nil || l.Value != 1024 {
		t.Errorf("ParseRlimit(no-file=1024) = %v, %v", l, err)
	}
	for _, bad := range []string{"memory.max", "=1"} {
		if _, err := ParseCgroup(bad); err == nil {
			t.Errorf("ParseCgroup(%q) accepted", bad)
		}
	}
	if b, err := ParseBind("/a/b/disk.img", true); err != nil || b.Jail != "/disk.img" || !b.Writable {
		t.Errorf("ParseBind default jail path = %+v, %v", b, err)
	}
	if b, err := ParseBind("/a/k:/boot/k", false); err != nil || b.Jail != "/boot/k" {
		t.Errorf("ParseBind = %+v, %v", b, err)
	}
}

func TestPlanCgroupsPicksTheHierarchy(t *testing.T) {
	cfg := validConfig(t)
	cfg.Cgroups = []CgroupSetting{{"memory.max", "256M"}, {"pids.max", "64"}}
	mounts := []mount{
		{path: "/sys/fs/cgroup/unified", version: 2, controllers: []string{"hugetlb"}},
		{path: "/sys/fs/cgroup/memory", version: 1, controllers: []string{"memory"}},
		{path: "/sys/fs/cgroup/pids", version: 1, controllers: []string{"pids"}},
	}
	// memory.max is a v2 file, but the v2 hierarchy here has no memory
	// controller: the automatic choice is v1, where memory.max is unknown.
	if _, err := planCgroups(&cfg, mounts); err == nil || !strings.Contains(err.Error(), "memory.max") {
		t.Errorf("v2 files on a v1-only host: %v", err)
	}
	cfg.Cgroups = []CgroupSetting{{"memory.limit_in_bytes", "256M"}, {"pids.max", "64"}}
	p, err := planCgroups(&cfg, mounts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/sys/fs/cgroup/memory/" + cfg.ExecName() + "/vm-1", "/sys/fs/cgroup/pids/" + cfg.ExecName() + "/vm-1"}
	if got := p.sortedDirs(); strings.Join(got, " ") != strings.Join(want, " ") || p.version != 1 {
		t.Errorf("plan = v%d %v, want v1 %v", p.version, got, want)
	}
	mounts = append(mounts, mount{path: "/sys/fs/cgroup", version: 2, controllers: []string{"cpu", "memory", "pids"}})
	cfg.Cgroups = []CgroupSetting{{"memory.max", "256M"}, {"pids.max", "64"}}
	if p, err = planCgroups(&cfg, mounts); err != nil || p.version != 2 {
		t.Errorf("with a full v2 hierarchy: %v, %v", p, err)
	}
	cfg.CgroupVersion = 1
	cfg.Cgroups = []CgroupSetting{{"cpu.cfs_quota_us", "50000"}}
	if _, err := planCgroups(&cfg, mounts); err == nil || !strings.Contains(err.Error(), "no cgroup v1 hierarchy has the cpu controller") {
		t.Errorf("a missing controller: %v", err)
	}
}

// vmmBinary is volt-vmm built from this tree.
func vmmBinary(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, "./cmd/volt-vmm")
}

func probeKernel(t *testing.T) string {
	t.Helper()
	p := os.Getenv("VOLT_PROBE")
	if p == "" {
		p, _ = filepath.Abs("../build/guest/probe.elf")
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("skipping: needs the probe guest (scripts/setup builds build/guest/probe.elf): %v", err)
	}
	return p
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the jailer needs root (namespaces, mounts, mknod, setuid)")
	}
}

// jailed runs one jailed volt-vmm in the background.
type jailed struct {
	cfg    Config
	stdin  *os.File
	out    *syncBuffer
	done   chan struct{}
	res    Result
	err    error
	cancel context.CancelFunc
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startJailed(t *testing.T, c Config) *jailed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	// An *os.File, so the VMM reads the pipe itself and the wait does
	// not hang on a copying goroutine.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	j := &jailed{cfg: c, stdin: w, out: &syncBuffer{}, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(j.done)
		defer r.Close()
		j.res, j.err = Run(ctx, c, MonotonicMicros(), r, j.out, j.out, func(s string) { t.Log(s) })
	}()
	t.Cleanup(func() {
		cancel()
		w.Close()
		<-j.done
	})
	return j
}

func (j *jailed) wait(t *testing.T) {
	t.Helper()
	j.stdin.Close()
	<-j.done
}

// vmmPID waits for the pid file, then for the process to be volt-vmm
// (exec done).
func (j *jailed) vmmPID(t *testing.T) int {
	t.Helper()
	pidFile := filepath.Join(j.cfg.JailDir(), j.cfg.ExecName()+".pid")
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			var pid int
			if _, err := fmtSscan(string(b), &pid); err == nil {
				if exe, err := os.Readlink(filepathJoinProc(pid, "exe")); err == nil && strings.HasSuffix(exe, "/"+j.cfg.ExecName()) {
					return pid
				}
			}
		}
		select {
		case <-j.done:
			t.Fatalf("the jail ended before volt-vmm ran: %v %+v\n%s", j.err, j.res, j.out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	b, _ := os.ReadFile(pidFile)
	t.Fatalf("volt-vmm did not start in the jail (pid file %q)\n%s", b, j.out)
	return 0
}

func status(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepathJoinProc(pid, "status"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestJailedVMMBootsSnapshotsAndRestores: volt-vmm from bin/ runs in the
// chroot as uid 10123 with no capability, PID 1 of its namespace and in its
// cgroups; it boots the probe, is paused and snapshotted through its API
// socket (inside the chroot), powers off; a second jail restores the
// snapshot and powers off.
func TestJailedVMMBootsSnapshotsAndRestores(t *testing.T) {
	requireRoot(t)
	kvmtest.Require(t)
	vmm := vmmBinary(t)
	probe := probeKernel(t)
	base := t.TempDir()
	snap := t.TempDir()
	if err := os.Chown(snap, 10123, 10123); err != nil {
		t.Fatal(err)
	}
	c := Config{
		ID: "jail-boot", ExecFile: vmm, UID: 10123, GID: 10123, ChrootBase: base,
		Cgroups: []CgroupSetting{{"pids.max", "64"}, {"memory.limit_in_bytes", "512M"}, {"cpu.cfs_quota_us", "100000"}},
		Binds:   []Bind{{Host: probe, Jail: "/probe.elf"}, {Host: snap, Jail: "/snap", Writable: true}},
		Args:    []string{"--kernel", "/probe.elf", "--memory", "128M", "--api-sock", "/api.sock", "--snapshot-dir", "/snap"},
	}
	if cgroupV1(t, "pids") == "" {
		c.Cgroups = nil // no v1 hierarchies here; the cgroup test needs them
	}
	j := startJailed(t, c)
	pid := j.vmmPID(t)
	st := status(t, pid)
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapInh": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"} {
		if st[k] != want {
			t.Errorf("volt-vmm %s = %s, want %s", k, st[k], want)
		}
	}
	if f := strings.Fields(st["Uid"]); len(f) != 4 || f[0] != "10123" || f[1] != "10123" || f[2] != "10123" {
		t.Errorf("Uid = %q, want 10123 (real, effective, saved)", st["Uid"])
	}
	if f := strings.Fields(st["Gid"]); len(f) != 4 || f[0] != "10123" {
		t.Errorf("Gid = %q, want 10123", st["Gid"])
	}
	if st["Groups"] != "" {
		t.Errorf("supplementary groups %q, want none", st["Groups"])
	}
	if f := strings.Fields(st["NSpid"]); len(f) != 2 || f[1] != "1" {
		t.Errorf("NSpid = %q, want PID 1 in its own namespace", st["NSpid"])
	}
	// Its root is the chroot: only what the VM needs is there.
	entries, err := os.ReadDir(filepathJoinProc(pid, "root"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got, want := strings.Join(names, " "), "api.sock dev probe.elf proc snap volt-vmm"; got != want && got != strings.Replace(want, "api.sock ", "", 1) {
		t.Errorf("the VMM's / holds %q, want %q", got, want)
	}
	if c.Cgroups != nil {
		cg, err := os.ReadFile(filepathJoinProc(pid, "cgroup"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(cg), "pids:/volt-vmm/jail-boot") || !strings.Contains(string(cg), "memory:/volt-vmm/jail-boot") {
			t.Errorf("volt-vmm's cgroups:\n%s", cg)
		}
	}
	sock := filepath.Join(c.RootDir(), "api.sock")
	api := client.New(sock)
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitFor(t, func() bool { _, err := os.Stat(sock); return err == nil })
	if err := api.Start(ctx); err != nil {
		t.Fatalf("InstanceStart: %v\n%s", err, j.out)
	}
	waitFor(t, func() bool { return strings.Contains(j.out.String(), "volt-probe: ready") })
	// Once the guest runs, the VMM is under its own seccomp filters too.
	if st := status(t, pid); st["Seccomp"] != "2" || st["Seccomp_filters"] == "0" {
		t.Errorf("running volt-vmm: Seccomp %q, Seccomp_filters %q; want mode 2 with filters", st["Seccomp"], st["Seccomp_filters"])
	}
	if err := api.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := api.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: "/snap/" + types.SnapshotStateFile, MemFilePath: "/snap/" + types.SnapshotMemFile}); err != nil {
		t.Fatalf("snapshot inside the jail: %v\n%s", err, j.out)
	}
	if err := api.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	io.WriteString(j.stdin, "echo jailed\npoweroff\n")
	j.wait(t)
	if j.err != nil || j.res.ExitCode != 0 || !strings.Contains(j.out.String(), "jailed") {
		t.Fatalf("jailed boot: %v %+v\n%s", j.err, j.res, j.out)
	}
	if c.Cgroups != nil {
		if _, err := os.Stat(filepath.Join(cgroupV1(t, "pids"), "volt-vmm", "jail-boot")); !os.IsNotExist(err) {
			t.Errorf("the cgroup is left behind: %v", err)
		}
	}

	r := Config{ID: "jail-restore", ExecFile: vmm, UID: 10123, GID: 10123, ChrootBase: base,
		Binds: []Bind{{Host: snap, Jail: "/snap"}}, Args: []string{"--restore", "/snap"}}
	j2 := startJailed(t, r)
	io.WriteString(j2.stdin, "echo restored\npoweroff\n")
	j2.wait(t)
	if j2.err != nil || j2.res.ExitCode != 0 || !strings.Contains(j2.out.String(), "restored") {
		t.Fatalf("jailed restore: %v %+v\n%s", j2.err, j2.res, j2.out)
	}
}

// TestJailReportsEachFailedStep: a jail that cannot be built says which
// step failed and leaves no cgroup behind.
func TestJailReportsEachFailedStep(t *testing.T) {
	requireRoot(t)
	vmm := vmmBinary(t)
	base := t.TempDir()
	// A symlink planted in a reused chroot must not redirect a mount.
	c := Config{ID: "jail-fail", ExecFile: vmm, UID: 10123, GID: 10123, ChrootBase: base,
		Binds: []Bind{{Host: vmm, Jail: "/boot/kernel"}}}
	if err := makeJailDir(&c); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(c.RootDir(), "boot")); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), c, MonotonicMicros(), nil, io.Discard, io.Discard, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "a symlink, not a directory") {
		t.Fatalf("Run with a planted symlink = %+v, %v", res, err)
	}
	// A cgroup value the kernel refuses (over the v1 pids limit format).
	if cgroupV1(t, "pids") != "" {
		c2 := Config{ID: "jail-cgfail", ExecFile: vmm, UID: 10123, GID: 10123, ChrootBase: base,
			CgroupVersion: 1, Cgroups: []CgroupSetting{{"cpu.cfs_period_us", "1"}}}
		_, err := Run(context.Background(), c2, MonotonicMicros(), nil, io.Discard, io.Discard, func(string) {})
		if err == nil || !strings.Contains(err.Error(), "cpu.cfs_period_us") {
			t.Fatalf("a period the kernel refuses: %v", err)
		}
		if _, err := os.Stat(filepath.Join(cgroupV1(t, "cpu"), "volt-vmm", "jail-cgfail")); !os.IsNotExist(err) {
			t.Errorf("the failed cgroup is left behind: %v", err)
		}
	}
}

func cgroupV1(t *testing.T, controller string) string {
	mounts, err := cgroupMounts("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.version == 1 && contains(m.controllers, controller) {
			return m.path
		}
	}
	return ""
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fmtSscan(s string, pid *int) (int, error) { return fmt.Sscan(strings.TrimSpace(s), pid) }

func filepathJoinProc(pid int, name string) string {
	return filepath.Join("/proc", strconv.Itoa(pid), name)
}

// hooked is one jailed volt-vmm run with the hidden --test-* hooks: the
// probe at /probe.elf, whatever else binds adds, and the VMM's extra
// args. The guest, when the VMM lets it run, powers off at once.
func runHooked(t *testing.T, base, id string, binds []Bind, args ...string) *jailed {
	t.Helper()
	c := Config{ID: id, ExecFile: vmmBinary(t), UID: 10123, GID: 10123, ChrootBase: base,
		Binds: append([]Bind{{Host: probeKernel(t), Jail: "/probe.elf"}}, binds...),
		Args:  append([]string{"--kernel", "/probe.elf", "--memory", "32M"}, args...)}
	j := startJailed(t, c)
	io.WriteString(j.stdin, "echo hooked\npoweroff\n")
	j.wait(t)
	if j.err != nil {
		t.Fatalf("the jail: %v\n%s", j.err, j.out)
	}
	return j
}

// worldReadable is a file any uid may open, in a directory any uid may
// search, on the host: a refusal to open it in the jail is the jail's,
// not the file's mode.
func worldReadable(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "volt-jail-secret-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "secret")
	if err := os.WriteFile(f, []byte("host secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestJailedVMMCannotOpenOutsideItsRules: once confined, the jailed VMM
// opens (--test-open-after-confine) a file of its chroot that Landlock's
// rules leave out, and is refused; without Landlock the same open
// succeeds (the refusal is Landlock's, not the file's mode), and a file
// in its --snapshot-dir opens under Landlock. The host's paths are not
// there at all, not even through /proc/1/root (its /proc is its own PID
// namespace's, where PID 1 is the VMM), with Landlock off so that only the
// chroot stands in the way. Every run also makes the forbidden call
// (--test-seccomp-violation), which ends it before the guest runs.
func TestJailedVMMCannotOpenOutsideItsRules(t *testing.T) {
	requireRoot(t)
	kvmtest.Require(t)
	secret := worldReadable(t)
	snap := t.TempDir()
	if err := os.Chmod(snap, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snap, "inside"), []byte("in the rules\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	binds := []Bind{{Host: secret, Jail: "/secret"}, {Host: snap, Jail: "/snap"}}
	base := t.TempDir()
	for i, c := range []struct {
		name string
		path string
		args []string
		want string // the open's error as the VMM logs it
	}{
		{"chroot file outside Landlock's rules", "/secret", nil, "open /secret: permission denied"},
		{"the same file without Landlock", "/secret", []string{"--no-landlock"}, "<nil>"},
		{"file in --snapshot-dir", "/snap/inside", nil, "<nil>"},
		{"host path of the bound file", secret, []string{"--no-landlock"}, "open " + secret + ": no such file or directory"},
		{"host path through /proc/1/root", "/proc/1/root" + secret, []string{"--no-landlock"}, "open /proc/1/root" + secret + ": no such file or directory"},
		{"host path through ..", "/../.." + secret, []string{"--no-landlock"}, "open /../.." + secret + ": no such file or directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"--snapshot-dir", "/snap", "--test-open-after-confine", c.path, "--test-seccomp-violation"}, c.args...)
			j := runHooked(t, base, fmt.Sprintf("open-%d", i), binds, args...)
			line := regexp.MustCompile(`test: open after confinement.* path=(\S+) err=("[^"]*"|\S+)`).FindStringSubmatch(j.out.String())
			if line == nil {
				t.Fatalf("the VMM did not log its open: %+v\n%s", j.res, j.out)
			}
			if got := strings.Trim(line[2], `"`); line[1] != c.path || got != c.want {
				t.Errorf("open %s in the jail: %s (path %s), want %s", c.path, got, line[1], c.want)
			}
			if j.res.Signal != unix.SIGSYS {
				t.Errorf("the forbidden call after the open: %+v, want a SIGSYS kill\n%s", j.res, j.out)
			}
		})
	}
}

// TestJailedVMMDiesOnAForbiddenCall: a jailed volt-vmm that makes a
// system call no filter allows (--test-seccomp-violation, kexec_file_load)
// is killed by SIGSYS at either seccomp level, and the jailer's Result
// says so (exit status 128+31, as a shell reports it); the kernel's audit
// record, when its rate-limited printk let one through, names the call.
// At level 0 the same call returns, the VMM says so and boots the guest:
// the hook does make the call, and the kill is the filter's.
func TestJailedVMMDiesOnAForbiddenCall(t *testing.T) {
	requireRoot(t)
	kvmtest.Require(t)
	base := t.TempDir()
	for i, c := range []struct {
		name   string
		level  string
		killed bool
	}{
		{"level 2, system calls and arguments", "2", true},
		{"level 1, system calls", "1", true},
		{"level 0, no filters", "0", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			j := runHooked(t, base, fmt.Sprintf("seccomp-%d", i), nil, "--seccomp-level", c.level, "--test-seccomp-violation")
			out := j.out.String()
			if !c.killed {
				if j.res != (Result{}) || !strings.Contains(out, "test: kexec_file_load returned instead of killing the VMM") || !strings.Contains(out, "hooked") {
					t.Errorf("unfiltered, the call should return and the guest run: %+v\n%s", j.res, out)
				}
				return
			}
			if j.res.Signal != unix.SIGSYS || j.res.ExitCode != 128+int(unix.SIGSYS) {
				t.Fatalf("Result %+v, want Signal SIGSYS and ExitCode %d\n%s", j.res, 128+int(unix.SIGSYS), out)
			}
			if strings.Contains(out, "returned instead of killing") || strings.Contains(out, "hooked") {
				t.Errorf("the VMM went on after the forbidden call:\n%s", out)
			}
			if j.res.Seccomp == nil {
				t.Logf("no audit record read (the kernel's printk is rate-limited); Result %+v", j.res)
				return
			}
			t.Log(j.res.Seccomp)
			if j.res.Seccomp.Name != "kexec_file_load" || j.res.Seccomp.Syscall != unix.SYS_KEXEC_FILE_LOAD {
				t.Errorf("the audit record names %s (%d), want kexec_file_load (%d)", j.res.Seccomp.Name, j.res.Seccomp.Syscall, unix.SYS_KEXEC_FILE_LOAD)
			}
		})
	}
}

// TestVoltJailerNamesASeccompKill: the volt-jailer command says on stderr
// that seccomp killed volt-vmm (the system call, from the audit record) or
// at least that SIGSYS did, and exits 128+31.
func TestVoltJailerNamesASeccompKill(t *testing.T) {
	requireRoot(t)
	kvmtest.Require(t)
	cmd := exec.Command(testbin.Build(t, "./cmd/volt-jailer"), "--id", "cli-seccomp", "--exec-file", vmmBinary(t),
		"--uid", "10123", "--gid", "10123", "--chroot-base-dir", t.TempDir(), "--ro-bind", probeKernel(t)+":/probe.elf",
		"--", "--kernel", "/probe.elf", "--memory", "32M", "--test-seccomp-violation")
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stderr = strings.NewReader("echo hooked\npoweroff\n"), &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 128+int(unix.SIGSYS) {
		t.Fatalf("volt-jailer: %v, want exit status %d\n%s", err, 128+int(unix.SIGSYS), stderr.String())
	}
	m := regexp.MustCompile(`(?m)^volt-jailer: volt-vmm killed by (seccomp: .*forbidden system call (\S+) \(\d+\)|SIGSYS: a seccomp filter .*)$`).FindStringSubmatch(stderr.String())
	switch {
	case m == nil:
		t.Errorf("volt-jailer did not name the kill:\n%s", stderr.String())
	case m[2] == "":
		t.Logf("no audit record read (rate-limited printk): %s", m[0])
	case m[2] != "kexec_file_load":
		t.Errorf("volt-jailer names %s, want kexec_file_load: %s", m[2], m[0])
	default:
		t.Log(m[0])
	}
}
