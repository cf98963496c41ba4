package voltinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/agent"
	"golang.org/x/sys/unix"
)

// startTestAgent serves h on a Unix socket: VsockAgent's accept loop and
// Stop do not depend on the socket's family, and the host that runs the
// unit tests has no vsock device (the Linux guest test covers vsock).
func startTestAgent(t *testing.T, h agent.Handler) (a *VsockAgent, path string, logs *syncBuffer) {
	t.Helper()
	dir, err := os.MkdirTemp("", "va")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "a.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, agentBacklog); err != nil {
		t.Fatal(err)
	}
	logs = &syncBuffer{}
	a = &VsockAgent{Handler: h, Logf: func(f string, args ...any) { fmt.Fprintf(logs, f+"\n", args...) }}
	if err := a.serve(fd, "test"); err != nil {
		t.Fatal(err)
	}
	return a, path, logs
}

func runOn(t *testing.T, path string, req agent.Request) (agent.Result, error) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		return agent.Result{}, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return (&agent.Client{}).Run(ctx, c, req)
}

func TestVsockAgentAnswersEachConnectionAfterBeforeServe(t *testing.T) {
	var checks atomic.Int32
	h := agent.HandlerFunc(func(ctx context.Context, req agent.Request, stdout, stderr io.Writer) agent.Status {
		fmt.Fprintf(stdout, "%s after %d checks", strings.Join(req.Args, " "), checks.Load())
		return agent.Status{Kind: agent.Exited, Code: 3}
	})
	a, path, logs := startTestAgent(t, h)
	a.BeforeServe = func() { checks.Add(1) }
	defer a.Stop(time.Second)
	for i := 1; i <= 3; i++ {
		res, err := runOn(t, path, agent.Request{Args: []string{"echo", "x"}})
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("echo x after %d checks", i); string(res.Stdout) != want || res.Status.Code != 3 {
			t.Errorf("request %d: %q %v, want %q and exit status 3", i, res.Stdout, res.Status, want)
		}
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Ping(context.Background(), c); err != nil {
		t.Errorf("ping: %v", err)
	}
	c.Close()
	// A caller that leaves without a request is not worth a log line.
	c, err = net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	a.Stop(time.Second)
	if logs.String() != "" {
		t.Errorf("agent logged %q", logs.String())
	}
	if _, err := runOn(t, path, agent.Request{Args: []string{"late"}}); err == nil {
		t.Error("a request after Stop was answered")
	}
}

func TestVsockAgentStop(t *testing.T) {
	tests := []struct {
		name string
		// handler runs the request; release, when closed, lets it end.
		handler func(ctx context.Context, stdout io.Writer, release <-chan struct{}) agent.Status
		// readOutput: the caller reads its answer (false: it never reads).
		readOutput bool
		grace      time.Duration
		wantStatus agent.Kind // the caller's answer, when it reads
		wantLog    string     // what the agent logs ("" for nothing)
	}{
		{
			name: "a request in flight finishes within the grace",
			handler: func(ctx context.Context, stdout io.Writer, release <-chan struct{}) agent.Status {
				<-release
				io.WriteString(stdout, "done")
				return agent.Status{Kind: agent.Exited}
			},
			readOutput: true, grace: 10 * time.Second, wantStatus: agent.Exited,
		},
		{
			name: "a request past the grace is cancelled",
			handler: func(ctx context.Context, stdout io.Writer, release <-chan struct{}) agent.Status {
				<-ctx.Done()
				return agent.Status{Kind: agent.Signaled, Code: int32(unix.SIGKILL)}
			},
			readOutput: true, grace: 20 * time.Millisecond, wantStatus: agent.Signaled,
			wantLog: "agent: requests still running after 20ms: cancelling them\n",
		},
		{
			name: "a caller that stops reading does not hold power-off",
			handler: func(ctx context.Context, stdout io.Writer, release <-chan struct{}) agent.Status {
				chunk := bytes.Repeat([]byte("x"), 64<<10)
				for ctx.Err() == nil {
					if _, err := stdout.Write(chunk); err != nil {
						break
					}
				}
				return agent.Status{Kind: agent.Signaled, Code: int32(unix.SIGKILL)}
			},
			grace:   20 * time.Millisecond,
			wantLog: "agent: requests still running after 20ms: cancelling them\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			running := make(chan struct{})
			var once sync.Once
			h := agent.HandlerFunc(func(ctx context.Context, req agent.Request, stdout, stderr io.Writer) agent.Status {
				once.Do(func() { close(running) })
				return tt.handler(ctx, stdout, release)
			})
			a, path, logs := startTestAgent(t, h)
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			answer := make(chan agent.Result, 1)
			if tt.readOutput {
				go func() {
					res, err := (&agent.Client{}).Run(context.Background(), c, agent.Request{Args: []string{"work"}})
					if err != nil {
						t.Errorf("client: %v", err)
					}
					answer <- res
				}()
			} else {
				payload, err := agent.Request{Args: []string{"work"}}.Encode()
				if err != nil {
					t.Fatal(err)
				}
				hdr := []byte{byte(len(payload)), byte(len(payload) >> 8), 0, 0, agent.FrameRequest, 0, 0, 0}
				if _, err := c.Write(append(hdr, payload...)); err != nil {
					t.Fatal(err)
				}
			}
			<-running
			stopped := make(chan struct{})
			go func() {
				a.Stop(tt.grace)
				close(stopped)
			}()
			// Stop must not return while the request is still within its
			// grace and running.
			select {
			case <-stopped:
				if tt.grace > time.Second {
					t.Fatal("Stop returned before the request in flight ended")
				}
			case <-time.After(50 * time.Millisecond):
			}
			close(release)
			<-stopped
			if tt.readOutput {
				if res := <-answer; res.Status.Kind != tt.wantStatus {
					t.Errorf("the caller got %v, want kind %v", res.Status, tt.wantStatus)
				}
			}
			if logs.String() != tt.wantLog {
				t.Errorf("agent logged %q, want %q", logs.String(), tt.wantLog)
			}
		})
	}
}

func TestVsockAgentStopWithoutStartDoesNothing(t *testing.T) {
	var a VsockAgent
	a.Stop(time.Second)
}

func TestCheckGuestCID(t *testing.T) {
	for _, tt := range []struct {
		cid uint32
		ok  bool
	}{
		{unix.VMADDR_CID_ANY, false},   // virtio transport without a device
		{unix.VMADDR_CID_LOCAL, false}, // only the loopback transport answers
		{unix.VMADDR_CID_HOST, false},
		{unix.VMADDR_CID_HYPERVISOR, false},
		{3, true},
		{0xfffffffe, true},
	} {
		err := checkGuestCID(tt.cid)
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, ErrNoVsock) {
			t.Errorf("checkGuestCID(%d) = %v, want ok=%v", tt.cid, err, tt.ok)
		}
	}
}
