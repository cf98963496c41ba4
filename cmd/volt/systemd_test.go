package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/rootfs"
	"github.com/voltvmm/volt/nspawn"
	"github.com/voltvmm/volt/nspawn/instance"
)

// The transient-unit path is tested against a real systemd: a Debian tree
// made by debootstrap, booted with systemd-nspawn on this host (whose PID 1
// is not systemd), and volt run inside it with nsenter, where it finds
// systemd as PID 1 and starts each container as a transient unit over
// D-Bus. The tree is cached by its inputs under $VOLT_CACHE (default
// ~/.cache/volt): built once (about 40 s), booted read-only with a tmpfs
// overlay (--volatile=overlay) so that no run changes it.
var systemdTreeInputs = struct {
	Suite, Variant, Mirror string
	Include                []string
}{
	Suite:   "bookworm",
	Variant: "minbase",
	Mirror:  "http://deb.debian.org/debian",
	// systemd-container: systemd-nspawn inside, for the containers.
	Include: []string{"systemd", "systemd-sysv", "dbus", "systemd-container"},
}

func cacheDir() string {
	if d := os.Getenv("VOLT_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "volt-cache")
	}
	return filepath.Join(home, ".cache", "volt")
}

// systemdTree returns the cached tree, building it if needed. Concurrent
// test binaries build it once (a flock), and a half-built tree is never
// used (built under a temporary name, then renamed).
func systemdTree(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("debootstrap"); err != nil {
		if _, err := os.Stat("/usr/sbin/debootstrap"); err != nil {
			t.Skip("debootstrap missing (apt-get install debootstrap)")
		}
	}
	ver, _ := exec.Command("debootstrap", "--version").Output()
	key, _ := json.Marshal(systemdTreeInputs)
	sum := sha256.Sum256(append(key, ver...))
	base := filepath.Join(cacheDir(), "systemd-tree")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(sum[:8])
	root := filepath.Join(base, id)
	lock, err := os.OpenFile(root+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "usr", "lib", "systemd", "systemd")); err == nil {
		return root
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	start := time.Now()
	cmd := exec.Command("debootstrap", "--variant="+systemdTreeInputs.Variant, "--include="+strings.Join(systemdTreeInputs.Include, ","),
		systemdTreeInputs.Suite, tmp, systemdTreeInputs.Mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		t.Skipf("debootstrap failed (no network to %s?): %v\n%s", systemdTreeInputs.Mirror, err, lastLinesOf(string(out), 10))
	}
	// Boot quietly: no getty waiting on a console, a fixed machine id.
	os.WriteFile(filepath.Join(tmp, "etc", "machine-id"), []byte("1c0d5a1d2c3e4f5061728394a5b6c7d8\n"), 0o444)
	os.Remove(filepath.Join(tmp, "etc", "systemd", "system", "getty.target.wants", "getty@tty1.service"))
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the systemd tree %s in %v", root, time.Since(start).Round(time.Second))
	return root
}

func lastLinesOf(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// bootedSystemd is a systemd booted in a container.
type bootedSystemd struct {
	cmd    *exec.Cmd
	pid1   int // its PID 1, as the host sees it
	log    string
	exited chan struct{}
}

// bootSystemd boots tree; binds are host paths seen at the same path
// inside, read-write, and roBinds read-only.
func bootSystemd(t *testing.T, tree string, binds, roBinds []string) *bootedSystemd {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "boot.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--quiet", "--boot", "--directory=" + tree, "--volatile=overlay", "--register=no", "--keep-unit",
		"--machine=volt-systemd-test", "--console=passive",
		// What containers inside need from the host: FUSE, loop devices
		// (their nodes are made on demand under the instance's directory),
		// and the test's files at the same paths.
		"--bind=/dev/fuse", "--bind=/dev/loop-control"}
	for _, b := range binds {
		args = append(args, "--bind="+b)
	}
	for _, b := range roBinds {
		args = append(args, "--bind-ro="+b)
	}
	cmd := exec.Command("systemd-nspawn", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	b := &bootedSystemd{cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(b.exited) }()
	t.Cleanup(b.shutdown)
	deadline := time.Now().Add(90 * time.Second)
	for b.pid1 == 0 {
		if pid := instance.NamespaceInit(cmd.Process.Pid); pid != 0 {
			b.pid1 = pid
			break
		}
		select {
		case <-b.exited:
			t.Fatalf("systemd-nspawn exited:\n%s", b.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-nspawn started no PID 1:\n%s", b.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		out, _ := b.inside("systemctl", "is-system-running").Output()
		state := strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			return b
		}
		select {
		case <-b.exited:
			t.Fatalf("systemd-nspawn exited:\n%s", b.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the systemd in the container is %q after 90s:\n%s", state, b.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// inside is a command run in every namespace of the booted container.
func (b *bootedSystemd) inside(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(b.pid1), "-a", "--"}, args...)...)
}

func (b *bootedSystemd) logTail() string {
	data, _ := os.ReadFile(b.log)
	return lastLinesOf(string(data), 20)
}

// shutdown powers the container off (SIGRTMIN+4 to its systemd) and kills
// it if it takes too long.
func (b *bootedSystemd) shutdown() {
	if b.pid1 != 0 {
		unix.Kill(b.pid1, unix.Signal(38)) // SIGRTMIN+4 as glibc numbers it (34+4): systemd powers off
	}
	select {
	case <-b.exited:
	case <-time.After(30 * time.Second):
		b.cmd.Process.Kill()
		<-b.exited
	}
}

func requireNspawnHost(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := nspawn.FindNspawn(); err != nil {
		t.Skip(err)
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s: %v", p, err)
		}
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter missing (util-linux)")
	}
}

func TestContainersAreTransientUnitsUnderARealSystemd(t *testing.T) {
	requireNspawnHost(t)
	tree := systemdTree(t)
	work, err := os.MkdirTemp("/tmp", "volt-systemd-test-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The image, imported here on the host into a store the container
	// sees at the same path.
	stage := filepath.Join(work, "tree")
	os.Mkdir(stage, 0o755)
	tr, err := rootfs.NewTree(context.Background(), rootfs.Options{Init: rootfs.DefaultBusybox, Busybox: rootfs.DefaultBusybox})
	if err != nil {
		t.Skip(err)
	}
	if _, err := rootfs.Stage(stage, tr); err != nil {
		t.Fatal(err)
	}
	st := []string{"--state-dir", filepath.Join(work, "state"), "--store", filepath.Join(work, "cas")}
	if rc, _, e := volt(t, append([]string{"image", "import", "busybox", "--dir", stage}, st...)...); rc != exitOK {
		t.Fatalf("import: %s", e)
	}

	sys := bootSystemd(t, tree, []string{work}, []string{exe})
	voltIn := func(args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		// Flags before the rest: after "--" they would be the command's.
		full := append(append(append([]string{exe}, args[:2]...), st...), args[2:]...)
		c := sys.inside(full...)
		c.Stdout, c.Stderr = &out, &errb
		err := c.Run()
		return out.String(), errb.String(), err
	}
	show := func(unit string, props ...string) map[string]string {
		out, _ := sys.inside("systemctl", "show", unit, "-p", strings.Join(props, ",")).Output()
		m := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				m[k] = v
			}
		}
		return m
	}

	out, errOut, err := voltIn("container", "run", "sd1", "--image", "busybox", "--memory", "64M", "--cpus", "0.5", "--",
		"/bin/sh", "-c", "echo hello-from-a-unit; cat /proc/self/uid_map; exec sleep 300")
	if err != nil {
		t.Fatalf("run under systemd: %v\n%s%s\nboot log:\n%s", err, out, errOut, sys.logTail())
	}
	if !strings.Contains(out, "unit volt-container-sd1.service") || strings.Contains(errOut, "not PID 1") {
		t.Errorf("run did not use systemd: %s %s", out, errOut)
	}
	unit := show("volt-container-sd1.service", "ActiveState", "Type", "MainPID", "MemoryMax", "MemoryLimit", "CPUQuotaPerSecUSec", "Delegate", "KillMode", "Slice", "ControlGroup")
	t.Logf("systemctl show volt-container-sd1.service: %v", unit)
	if unit["ActiveState"] != "active" || unit["Type"] != "notify" || unit["Delegate"] != "yes" || unit["KillMode"] != "mixed" || unit["Slice"] != "machine.slice" {
		t.Errorf("the unit: %v", unit)
	}
	if unit["MemoryMax"] != strconv.Itoa(64<<20) || unit["CPUQuotaPerSecUSec"] != "500ms" {
		t.Errorf("limits on the unit: MemoryMax=%s CPUQuotaPerSecUSec=%s", unit["MemoryMax"], unit["CPUQuotaPerSecUSec"])
	}
	// ls reads the state from systemd.
	out, errOut, err = voltIn("container", "ls", "--json")
	if err != nil {
		t.Fatalf("ls: %v %s", err, errOut)
	}
	var infos []nspawn.Info
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	in := infos[0]
	if in.State != instance.StateRunning || in.Record.Manager != instance.ManagerSystemd || in.Unit == nil || in.Unit.ActiveState != "active" ||
		strconv.Itoa(in.Unit.MainPID) != unit["MainPID"] {
		t.Errorf("ls: %+v (unit %+v)", in.Status, in.Unit)
	}
	t.Logf("ls: %s (unit %s %s, main pid %d)", in.State, in.Unit.Name, in.Unit.ActiveState, in.Unit.MainPID)
	// The payload is in the unit's cgroup.
	procs, _ := sys.inside("systemd-cgls", "--no-pager", "-u", "volt-container-sd1.service").Output()
	t.Logf("systemd-cgls -u volt-container-sd1.service:\n%s", procs)
	if !bytes.Contains(procs, []byte("sleep 300")) || !bytes.Contains(procs, []byte("systemd-nspawn")) {
		t.Errorf("the unit's cgroup does not hold nspawn and the payload:\n%s", procs)
	}
	logs, _, _ := voltIn("container", "logs", "sd1")
	if !strings.Contains(logs, "hello-from-a-unit") {
		t.Errorf("logs: %s", logs)
	}
	if _, errOut, err := voltIn("container", "run", "sd1", "--image", "busybox", "--", "/bin/true"); err == nil || !strings.Contains(errOut, "is running") {
		t.Errorf("a second run of a running name: %v %s", err, errOut)
	}
	out, errOut, err = voltIn("container", "stop", "sd1")
	if err != nil || !strings.Contains(out, "exited") {
		t.Errorf("stop: %v %s %s", err, out, errOut)
	}
	if u := show("volt-container-sd1.service", "ActiveState"); u["ActiveState"] == "active" {
		t.Errorf("the unit is still %v after stop", u)
	}

	// A supervisor SIGKILLed under systemd: systemd stops the unit and
	// kills the rest; ls says dead.
	if _, errOut, err := voltIn("container", "run", "sd2", "--image", "busybox", "--", "/bin/sleep", "300"); err != nil {
		t.Fatalf("run sd2: %v %s", err, errOut)
	}
	if err := sys.inside("systemctl", "kill", "--signal=KILL", "--kill-who=main", "volt-container-sd2.service").Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var state instance.State
	for time.Now().Before(deadline) {
		out, _, _ = voltIn("container", "ls", "--json")
		json.Unmarshal([]byte(out), &infos)
		for _, in := range infos {
			if in.Name == "sd2" {
				state = in.State
			}
		}
		if state == instance.StateDead {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if state != instance.StateDead {
		t.Errorf("after SIGKILL of the supervisor: %s", state)
	}
	t.Logf("after systemctl kill --signal=KILL --kill-who=main: ls says %s", state)
	if procs, _ := sys.inside("pgrep", "-f", "sleep 300").Output(); len(procs) != 0 {
		t.Errorf("the payload outlived its unit: %s", procs)
	}
	for _, n := range []string{"sd1", "sd2"} {
		if _, errOut, err := voltIn("container", "rm", n); err != nil {
			t.Errorf("rm %s: %v %s", n, err, errOut)
		}
	}
}
