package sandbox

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/internal/testbin"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

func TestLandlockDeniesWhatIsOutsideItsRules(t *testing.T) {
	if LandlockABI() == 0 {
		t.Skip("this kernel has no Landlock (not in /sys/kernel/security/lsm): Landlock is best effort and does nothing here")
	}
	dir := t.TempDir()
	for _, f := range []string{"kernel", "drive", "outside"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "snap"), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(victimBinary(t), "landlock", "-", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("landlock victim: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	for _, c := range []struct{ what, want string }{
		{"read kernel", "allowed"},
		{"write kernel", "denied: open " + filepath.Join(dir, "kernel") + ": permission denied"},
		{"write drive", "allowed"},
		{"create in snapshot dir", "allowed"},
		{"rename in snapshot dir", "allowed"},
		{"read outside", "denied: open " + filepath.Join(dir, "outside") + ": permission denied"},
		{"create outside", "denied"},
		{"read /etc/hostname", "denied"},
	} {
		line := c.what + ": " + c.want
		if !strings.Contains(string(out), line) {
			t.Errorf("want %q", line)
		}
	}
	if !strings.Contains(string(out), "landlock: enforced") {
		t.Errorf("no status line saying Landlock is enforced")
	}
}

func TestLandlockRefusesRelativeAndMissingPaths(t *testing.T) {
	for _, p := range []Paths{
		{ReadOnly: []string{"kernel"}},
		{Dirs: []string{""}},
		{ReadWrite: []string{"/nonexistent/volt-drive"}},
	} {
		if _, err := Landlock(p); err == nil {
			t.Errorf("Landlock(%+v) succeeded", p)
		}
	}
}

func TestDropCapabilitiesLeavesNoneOnAnyThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: there are capabilities to drop only as root")
	}
	out, err := exec.Command(victimBinary(t), "caps", "-", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("caps victim: %v\n%s", err, out)
	}
	threads, children := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			switch f[0] {
			case "CapInh:", "CapPrm:", "CapEff:", "CapAmb:":
				if f[1] != "0000000000000000" {
					t.Errorf("%s %s after DropCapabilities", f[0], f[1])
				}
			case "NoNewPrivs:":
				if f[1] != "1" {
					t.Errorf("NoNewPrivs %s", f[1])
				}
			}
		}
		if len(f) == 3 && f[0] == "child" {
			children++
			if f[2] != "0000000000000000" {
				t.Errorf("a program execed after DropCapabilities has %s %s", f[1], f[2])
			}
		}
		if len(f) == 4 && f[0] == "task" {
			threads++
			if f[2] != "NoNewPrivs:" && f[3] != "0000000000000000" || f[2] == "NoNewPrivs:" && f[3] != "1" {
				t.Errorf("thread %s: %s %s", f[1], f[2], f[3])
			}
		}
	}
	if threads < 6 {
		t.Errorf("saw %d per-thread lines, want every thread's (at least 2 threads × 3 lines)\n%s", threads, out)
	}
	if children != 4 {
		t.Errorf("saw %d lines of the execed program's capabilities, want 4\n%s", children, out)
	}
}

// TestConfinedVMMEveryThread reads every thread's status of a confined
// volt-vmm whose guest runs, started as root and under volt-jailer: no
// capability in any set (the bounding set too under the jailer, which
// empties it; a root VMM leaves it, see DropCapabilities), no_new_privs
// and the seccomp filter on every thread, although neither Landlock nor
// the capability drop set no_new_privs (the filter's TSYNC did), Landlock
// refusing an open outside its rules, and the number of all-thread rounds
// Landlock took: one before ABI 8 (its no_new_privs round skipped, by
// CAP_SYS_ADMIN as root, by the no_new_privs volt-jailer passes down),
// none from ABI 8 on.
func TestConfinedVMMEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a VMM as root has capabilities to drop, and volt-jailer needs root")
	}
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	vmm := testbin.Build(t, "./cmd/volt-vmm")
	vmmArgs := func(kernel string) []string {
		// The kernel was opened before the confinement, and may not be
		// opened again after it.
		return []string{"--kernel", kernel, "--memory", "32M", "--cpus", "2", "--level", "Info",
			"--test-open-after-confine", kernel}
	}
	wantRounds := 1
	if LandlockABI() >= abiTSync {
		wantRounds = 0
	}
	t.Run("root", func(t *testing.T) {
		cmd := exec.Command(vmm, vmmArgs(elf)...)
		checkConfinedVMM(t, cmd, func(*exec.Cmd) int { return cmd.Process.Pid }, elf, false, wantRounds)
	})
	t.Run("jailed", func(t *testing.T) {
		base := t.TempDir()
		jailer := testbin.Build(t, "./cmd/volt-jailer")
		cmd := exec.Command(jailer, append([]string{"--id", "every-thread", "--exec-file", vmm,
			"--uid", "10124", "--gid", "10124", "--chroot-base-dir", base, "--ro-bind", elf + ":/probe.elf", "--"},
			vmmArgs("/probe.elf")...)...)
		pidFile := filepath.Join(base, filepath.Base(vmm), "every-thread", filepath.Base(vmm)+".pid")
		checkConfinedVMM(t, cmd, func(*exec.Cmd) int {
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				if b, err := os.ReadFile(pidFile); err == nil {
					if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
						if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == filepath.Base(vmm) {
							return pid
						}
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Fatalf("no volt-vmm pid in %s", pidFile)
			return 0
		}, "/probe.elf", true, wantRounds)
	})
}

// checkConfinedVMM starts cmd (a volt-vmm booting the probe, or
// volt-jailer starting one), waits for the probe's ready line, checks
// every thread of the VMM (pid), then powers the guest off; the VMM's
// Landlock must refuse to open kernel (the path it was given) again.
func checkConfinedVMM(t *testing.T, cmd *exec.Cmd, pid func(*exec.Cmd) int, kernel string, bounding bool, wantRounds int) {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedOutput
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == probe.ReadyLine {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("the console closed before %q; stderr:\n%s", probe.ReadyLine, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no %q in 60 s; stderr:\n%s", probe.ReadyLine, stderr.String())
	}
	p := pid(cmd)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", p))
	if err != nil || len(tasks) < 3 {
		t.Fatalf("volt-vmm %d has %d threads (%v), want at least 3 (2 vCPUs and the rest)", p, len(tasks), err)
	}
	want := map[string]string{"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
	if bounding {
		want["CapBnd"] = "0000000000000000"
	}
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			t.Fatal(err)
		}
		st := map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				st[k] = strings.TrimSpace(v)
			}
		}
		for k, v := range want {
			if st[k] != v {
				t.Errorf("thread %s (%s) of volt-vmm: %s %s, want %s", filepath.Base(filepath.Dir(task)), st["Name"], k, st[k], v)
			}
		}
	}
	io.WriteString(in, "poweroff\n")
	if err := cmd.Wait(); err != nil {
		t.Errorf("volt-vmm: %v; stderr:\n%s", err, stderr.String())
	}
	log := stderr.String()
	if !strings.Contains(log, fmt.Sprintf(`path=%s err="open %s: permission denied"`, kernel, kernel)) {
		t.Errorf("Landlock let the confined VMM open %s again, or it did not say; stderr:\n%s", kernel, log)
	}
	if m := regexp.MustCompile(`landlock: enforced \(kernel ABI [0-9]+, ([0-9]+) all-thread rounds\)`).FindStringSubmatch(log); m == nil {
		t.Errorf("no Landlock status line; stderr:\n%s", log)
	} else if m[1] != strconv.Itoa(wantRounds) {
		t.Errorf("Landlock took %s all-thread rounds, want %d", m[1], wantRounds)
	}
	if m := regexp.MustCompile(`msg=confined .*`).FindString(log); m != "" {
		t.Log(m)
	}
}

// lockedOutput is a buffer written by a process's stderr copier and read
// by the test.
type lockedOutput struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedOutput) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// landlockHelperEnv names the mode of TestLandlockEveryThreadHelper, run
// as a child of TestLandlockReachesEveryThread.
const landlockHelperEnv = "VOLT_SANDBOX_LANDLOCK_HELPER"

// TestLandlockReachesEveryThread: whichever way Landlock gets past the
// kernel's no_new_privs-or-CAP_SYS_ADMIN check (CAP_SYS_ADMIN as root,
// no_new_privs set before, or its own no_new_privs round), its rules hold
// on every thread that existed before it and on one created after, and
// every thread ends with no capability and no_new_privs once the
// capabilities are cleared and EnsureNoNewPrivs has run; each way takes
// the rounds it should.
func TestLandlockReachesEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the modes differ by the capabilities held")
	}
	if LandlockABI() == 0 {
		t.Skip("this kernel has no Landlock")
	}
	tsync := LandlockABI() >= abiTSync
	for _, c := range []struct {
		mode   string
		rounds int
		nnp    bool // Landlock leaves no_new_privs set
	}{{"root", 1, false}, {"nnp", 1, true}, {"nocaps", 2, true}} {
		t.Run(c.mode, func(t *testing.T) {
			if tsync {
				c.rounds, c.nnp = 0, true
			}
			dir := t.TempDir()
			for _, f := range []string{"kernel", "outside"} {
				if err := os.WriteFile(filepath.Join(dir, f), []byte("data"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestLandlockEveryThreadHelper$", "-test.v")
			cmd.Env = append(os.Environ(), landlockHelperEnv+"="+c.mode, "VOLT_SANDBOX_LANDLOCK_DIR="+dir)
			in, _ := cmd.StdinPipe()
			outPipe, _ := cmd.StdoutPipe()
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			var out strings.Builder
			sc := bufio.NewScanner(outPipe)
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
				if sc.Text() == "helper: waiting" {
					break
				}
			}
			// Every thread's sets, read from outside while the helper waits.
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", cmd.Process.Pid))
			if len(tasks) < 8 {
				t.Errorf("the helper has %d threads, want at least 8 (7 locked, the main one)", len(tasks))
			}
			for _, task := range tasks {
				b, err := os.ReadFile(task)
				if err != nil {
					t.Fatal(err)
				}
				for _, line := range strings.Split(string(b), "\n") {
					k, v, _ := strings.Cut(line, ":")
					v = strings.TrimSpace(v)
					switch k {
					case "CapInh", "CapPrm", "CapEff", "CapAmb":
						if v != "0000000000000000" {
							t.Errorf("thread %s: %s %s", filepath.Base(filepath.Dir(task)), k, v)
						}
					case "NoNewPrivs":
						if v != "1" {
							t.Errorf("thread %s: NoNewPrivs %s", filepath.Base(filepath.Dir(task)), v)
						}
					}
				}
			}
			in.Close()
			rest, _ := io.ReadAll(outPipe)
			out.Write(rest)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("helper: %v\n%s", err, out.String())
			}
			o := out.String()
			threads := 0
			for _, line := range strings.Split(o, "\n") {
				if !strings.HasPrefix(line, "thread ") {
					continue
				}
				threads++
				if !strings.Contains(line, " kernel=ok ") || !strings.Contains(line, " outside=permission denied") {
					t.Errorf("Landlock not in force on a thread: %s", line)
				}
			}
			if threads < 7 {
				t.Errorf("%d threads reported, want 7 (6 from before, 1 after)\n%s", threads, o)
			}
			if want := fmt.Sprintf("helper: rounds=%d nnp=%v", c.rounds, c.nnp); !strings.Contains(o, want) {
				t.Errorf("want %q\n%s", want, o)
			}
		})
	}
}

// TestLandlockEveryThreadHelper is the child of
// TestLandlockReachesEveryThread; it does nothing in a normal run.
func TestLandlockEveryThreadHelper(t *testing.T) {
	mode := os.Getenv(landlockHelperEnv)
	if mode == "" {
		t.Skip("run by TestLandlockReachesEveryThread")
	}
	dir := os.Getenv("VOLT_SANDBOX_LANDLOCK_DIR")
	kernel, outside := filepath.Join(dir, "kernel"), filepath.Join(dir, "outside")
	// Six goroutines each locked to a thread of its own before Landlock,
	// asked to check the rules on their threads afterwards.
	check := func() string {
		res := func(path string) string {
			f, err := os.Open(path)
			if err != nil {
				if pe, ok := err.(*os.PathError); ok {
					return pe.Err.Error()
				}
				return err.Error()
			}
			f.Close()
			return "ok"
		}
		return fmt.Sprintf("thread %d kernel=%s outside=%s", unix.Gettid(), res(kernel), res(outside))
	}
	var asks []chan chan string
	var started sync.WaitGroup
	for range 6 {
		c := make(chan chan string)
		asks = append(asks, c)
		started.Add(1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the test
			started.Done()
			reply := <-c
			reply <- check()
			select {} // keep the thread for the parent to read
		}()
	}
	started.Wait()
	switch mode {
	case "nnp":
		if err := SetNoNewPrivs(); err != nil {
			t.Fatal(err)
		}
	case "nocaps":
		if err := ClearCapabilities(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := Landlock(Paths{ReadOnly: []string{kernel}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Enforced {
		t.Fatal("Landlock not enforced")
	}
	fmt.Printf("helper: rounds=%d nnp=%v\n", st.Rounds, st.NoNewPrivs)
	if err := ClearCapabilities(); err != nil {
		t.Fatal(err)
	}
	if err := EnsureNoNewPrivs(); err != nil {
		t.Fatal(err)
	}
	for _, c := range asks {
		reply := make(chan string)
		c <- reply
		fmt.Println(<-reply)
	}
	// A thread made after Landlock: locking this goroutine to a new one
	// while the six are busy.
	after := make(chan string)
	go func() {
		runtime.LockOSThread()
		after <- check()
		select {}
	}()
	fmt.Println(<-after)
	fmt.Println("helper: waiting")
	io.Copy(io.Discard, os.Stdin)
}
