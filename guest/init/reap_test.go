package voltinit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary run a helper instead of the tests: one
// whose main goroutine holds the main thread, as volt-init's does.
const helperEnv = "VOLT_INIT_TEST_HELPER"

func init() {
	if os.Getenv(helperEnv) != "" {
		runtime.LockOSThread() // as cmd/volt-init does
	}
}

func TestMain(m *testing.M) {
	switch h := os.Getenv(helperEnv); h {
	case "":
		os.Exit(m.Run())
	case "reap":
		if err := reapHelper(); err != nil {
			fmt.Fprintf(os.Stderr, "reap helper: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", h)
		os.Exit(2)
	}
}

// TestReapLeavesExecChildrenToTheirWaiters runs, in a process arranged as
// volt-init is (main goroutine on the main thread, a child subreaper in
// place of PID 1), a workload that orphans a grandchild, while os/exec on
// another goroutine runs a command, as the guest agent does: Linux.Reap must
// collect the workload and the orphan and never the command, whose
// exec.Cmd.Wait must then see its real exit status rather than ECHILD.
func TestReapLeavesExecChildrenToTheirWaiters(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=reap")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	t.Logf("%s", out)
}

// reapHelper is the body of TestReapLeavesExecChildrenToTheirWaiters; it
// runs on the main thread.
func reapHelper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	// The agent's command: started and waited for on another thread.
	type started struct {
		pid int
		err error
	}
	startedc, waited, release := make(chan started, 1), make(chan error, 1), make(chan struct{})
	go func() {
		c := exec.Command("/bin/sh", "-c", "exit 7")
		if err := c.Start(); err != nil {
			startedc <- started{err: err}
			return
		}
		startedc <- started{pid: c.Process.Pid}
		<-release
		waited <- c.Wait()
	}()
	s := <-startedc
	if s.err != nil {
		return s.err
	}
	if err := waitZombie(s.pid); err != nil {
		return err
	}
	// The zombie is this process's child, visible to a plain wait from
	// the main thread (so wait4(-1) would take it), and invisible with
	// __WNOTHREAD.
	if !waitable(s.pid, 0) {
		return fmt.Errorf("exec child %d is not waitable from the main thread at all: the test proves nothing", s.pid)
	}
	if waitable(s.pid, unix.WNOTHREAD) {
		return fmt.Errorf("exec child %d is waitable with __WNOTHREAD from the main thread", s.pid)
	}

	// The workload, forked from the main thread, leaves an orphan.
	var sys Linux
	workload, err := sys.Start([]string{"/bin/sh", "-c", "sleep 0.2 & exit 0"}, WorkloadEnv(nil, nil))
	if err != nil {
		return err
	}
	reaped := map[int]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		pid, _, err := sys.Reap()
		if errors.Is(err, unix.ECHILD) {
			break // nothing of the main thread's is left
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("reap: %w", err)
		}
		if pid == s.pid {
			return fmt.Errorf("Reap took the exec child %d", pid)
		}
		if pid > 0 {
			reaped[pid] = true
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after 20 s, reaped %v (workload %d)", reaped, workload)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !reaped[workload] || len(reaped) != 2 {
		return fmt.Errorf("reaped %v, want the workload %d and its orphan", reaped, workload)
	}
	close(release)
	var ee *exec.ExitError
	if err := <-waited; !errors.As(err, &ee) || ee.ExitCode() != 7 {
		return fmt.Errorf("exec.Cmd.Wait: %v, want exit status 7", err)
	}
	fmt.Printf("reaped workload %d and orphan, left exec child %d to exec.Cmd.Wait (exit status 7)\n", workload, s.pid)
	return nil
}

// waitZombie waits until pid has exited and not been reaped.
func waitZombie(pid int) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		// pid (comm) state ...: comm may hold blanks, so look after ")".
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return nil
		}
	}
	return fmt.Errorf("process %d did not exit in 10 s", pid)
}

// waitable reports whether the calling thread could wait for pid now,
// without reaping it.
func waitable(pid, extra int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|extra, nil)
	return err == nil && info.Signo == int32(unix.SIGCHLD)
}
