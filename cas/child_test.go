package cas

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The kill -9 and lease tests need real processes: the test binary re-executes
// itself with VOLT_CAS_TEST_CHILD set, and TestMain runs the child's part.
// A child that reaches the point the parent chose prints "ready" and blocks
// reading stdin (a pipe the parent never writes), so the parent kills it at
// a known point.

const childEnv = "VOLT_CAS_TEST_CHILD"

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

func runChild(role string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", role, err)
		return 1
	}
	s, err := Open(os.Getenv("VOLT_CAS_STORE"))
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	switch role {
	case "import":
		if h := os.Getenv("VOLT_CAS_HOOK"); h != "" {
			point, _ := strconv.Atoi(h)
			at, _ := strconv.ParseInt(os.Getenv("VOLT_CAS_HOOK_N"), 10, 64)
			var seen atomic.Int64
			testHookFn = func(p hookPoint) {
				if p == hookPoint(point) && seen.Add(1) == at {
					fmt.Println("ready")
					os.Stdin.Read(make([]byte, 1)) // blocks until killed
				}
			}
		}
		chunk, _ := strconv.ParseInt(os.Getenv("VOLT_CAS_CHUNK"), 10, 64)
		ss, err := s.Begin(ctx)
		if err != nil {
			return fail(err)
		}
		res, err := ss.ImportFile(ctx, os.Getenv("VOLT_CAS_FILE"), ImportOptions{ChunkSize: chunk})
		if err != nil {
			return fail(err)
		}
		if err := ss.SetRef(os.Getenv("VOLT_CAS_REF"), res.Digest); err != nil {
			return fail(err)
		}
		ss.Close()
		fmt.Println("done")
		return 0
	case "lease":
		d, err := ParseDigest(os.Getenv("VOLT_CAS_MANIFEST"))
		if err != nil {
			return fail(err)
		}
		if _, err := s.Lease(ctx, LeaseOptions{}, d); err != nil {
			return fail(err)
		}
		fmt.Println("ready")
		os.Stdin.Read(make([]byte, 1))
		return 0
	}
	return fail(fmt.Errorf("unknown role"))
}

// child is a running child process.
type child struct {
	cmd   *exec.Cmd
	lines chan string
	stdin *os.File // kept open so that the child's read blocks
}

func startChild(t *testing.T, role string, env ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + role}, env...)...)
	cmd.Stderr = os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = r
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	c := &child{cmd: cmd, lines: make(chan string, 4), stdin: w}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		w.Close()
	})
	return c
}

// expect waits for the child to print want.
func (c *child) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		if !ok || line != want {
			t.Fatalf("child printed %q (open %v), want %q", line, ok, want)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("child did not print %q in time", want)
	}
}

// kill9 kills the child with SIGKILL and reaps it.
func (c *child) kill9(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := c.cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
}

func (c *child) wait(t *testing.T) {
	t.Helper()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}
