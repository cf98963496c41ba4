package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// guestConsole runs one volt-vmm process, untraced, and talks to the probe
// on its serial console line by line: the snapshot's preparation and the
// clones use it. Its goroutines (stdout reader, reaper) are owned by it and
// gone after close.
type guestConsole struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	tail   *tailBuffer // console output, for error messages
	stderr *tailBuffer

	quit       chan struct{} // closed by close: stop handing lines over
	quitOnce   sync.Once
	readerDone chan struct{}
	exited     chan struct{} // closed once the process is reaped
	waitErr    error         // valid after exited is closed
}

// errConsoleClosed means the VMM's console ended before the expected line.
var errConsoleClosed = errors.New("console closed")

func startConsole(bin string, args ...string) (*guestConsole, error) {
	c := &guestConsole{
		cmd:        exec.Command(bin, args...),
		lines:      make(chan string, 64),
		tail:       &tailBuffer{max: 4 << 10},
		stderr:     &tailBuffer{max: 16 << 10},
		quit:       make(chan struct{}),
		readerDone: make(chan struct{}),
		exited:     make(chan struct{}),
	}
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("console: stdin pipe: %w", err)
	}
	c.stdin = stdin
	// An os.Pipe rather than StdoutPipe: the reaper may call Wait while
	// the reader is still draining, which StdoutPipe forbids.
	pr, pw, err := os.Pipe()
	if err != nil {
		stdin.Close()
		return nil, fmt.Errorf("console: stdout pipe: %w", err)
	}
	c.cmd.Stdout = pw
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		stdin.Close()
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("console: start %s: %w", bin, err)
	}
	pw.Close()
	go c.read(pr)
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *guestConsole) read(r io.ReadCloser) {
	defer close(c.readerDone)
	defer close(c.lines)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		c.tail.Write([]byte(line + "\n"))
		select {
		case c.lines <- line:
		case <-c.quit:
		}
	}
}

// pid is the VMM's process ID.
func (c *guestConsole) pid() int { return c.cmd.Process.Pid }

// ask sends one command line and returns the first reply line that starts
// with want. A probe error line ends the wait at once.
func (c *guestConsole) ask(ctx context.Context, command, want string) (string, error) {
	if _, err := io.WriteString(c.stdin, command+"\n"); err != nil {
		return "", fmt.Errorf("send %q: %w", command, err)
	}
	line, err := c.expect(ctx, want)
	if err != nil {
		return "", fmt.Errorf("%q: %w", command, err)
	}
	return line, nil
}

// expect waits for a line starting with want.
func (c *guestConsole) expect(ctx context.Context, want string) (string, error) {
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return "", fmt.Errorf("%w before %q; console tail %q; stderr %q", errConsoleClosed, want, c.tail.String(), strings.TrimSpace(c.stderr.String()))
			}
			if strings.HasPrefix(line, want) {
				return line, nil
			}
			if strings.HasPrefix(line, "error:") {
				return "", fmt.Errorf("guest answered %q while %q was awaited", line, want)
			}
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q: %w; console tail %q", want, ctx.Err(), c.tail.String())
		}
	}
}

// waitExit waits for the VMM to exit by itself (after poweroff) and
// returns its exit error; on ctx's end it kills it.
func (c *guestConsole) waitExit(ctx context.Context) error {
	select {
	case <-c.exited:
		if c.waitErr != nil {
			return fmt.Errorf("volt-vmm exited: %w; stderr %q", c.waitErr, strings.TrimSpace(c.stderr.String()))
		}
		return nil
	case <-ctx.Done():
		c.cmd.Process.Kill()
		<-c.exited
		return fmt.Errorf("volt-vmm did not exit: %w", ctx.Err())
	}
}

// terminate asks the VMM to stop (SIGTERM: it removes its API socket on
// the way out), kills it after grace, and reaps it.
func (c *guestConsole) terminate(grace time.Duration) {
	select {
	case <-c.exited:
		return
	default:
	}
	c.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		c.cmd.Process.Kill()
		<-c.exited
	}
}

// close kills the VMM if it still runs and waits for every goroutine of
// the console. Safe to call more than once.
func (c *guestConsole) close() {
	c.quitOnce.Do(func() { close(c.quit) })
	c.stdin.Close()
	select {
	case <-c.exited:
	default:
		c.cmd.Process.Kill()
		<-c.exited
	}
	<-c.readerDone
}
