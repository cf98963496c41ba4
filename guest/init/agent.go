package voltinit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/voltvmm/volt/guest/agent"
	"golang.org/x/sys/unix"
)

// Agent is the guest agent as Init drives it: started before the ready
// marker, so that whoever waits for "ready" can talk to it at once, and
// stopped first at power-off.
type Agent interface {
	// Start listens; once it returns nil, connections are answered.
	// ErrNoVsock means the guest has no vsock device to listen on.
	Start() error
	// Stop stops accepting, lets requests in flight finish for up to
	// grace, then cancels the rest (killing their commands) and waits
	// for them.
	Stop(grace time.Duration)
}

// ErrNoVsock is returned by VsockAgent.Start in a guest without a vsock
// device.
var ErrNoVsock = errors.New("no vsock device")

// agentBacklog is the listen backlog: a pool asks one request at a time,
// and a burst beyond it is refused by the kernel rather than queued.
const agentBacklog = 16

// cancelWait is how long Stop lets cancelled requests send their answer
// before it cuts their streams.
const cancelWait = time.Second

// stopWait bounds Stop's last wait, after every stream was cut and every
// command killed: agent.ExecHandler lets a killed command's pipes linger
// for 2 s. Power-off must not hang on a request that still does not end.
const stopWait = 5 * time.Second

// VsockAgent serves the guest agent protocol (guest/agent) on a vsock port
// of the guest: one goroutine accepts, one per connection answers, all
// owned by the VsockAgent and waited for by Stop.
type VsockAgent struct {
	Port    uint32
	Handler agent.Handler
	// BeforeServe runs before each accepted connection is answered; Init
	// sets it to the generation check, so that a clone restored from a
	// snapshot reseeds its RNG before it answers anything.
	BeforeServe func()
	Logf        func(format string, args ...any)

	ln     *os.File
	rc     syscall.RawConn
	ctx    context.Context
	cancel context.CancelFunc
	accept sync.WaitGroup // the accept loop
	conns  sync.WaitGroup // connections being answered

	mu     sync.Mutex
	active map[*os.File]struct{} // the connections' streams, to cut at Stop
}

var _ Agent = (*VsockAgent)(nil)

// Start opens the listening socket and starts accepting.
func (a *VsockAgent) Start() error {
	if a.ln != nil {
		return errors.New("agent: started twice")
	}
	if err := checkVsockDevice(); err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("agent: vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: a.Port}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("agent: bind vsock port %d: %w", a.Port, err)
	}
	if err := unix.Listen(fd, agentBacklog); err != nil {
		unix.Close(fd)
		return fmt.Errorf("agent: listen on vsock port %d: %w", a.Port, err)
	}
	if err := a.serve(fd, fmt.Sprintf("vsock:%d", a.Port)); err != nil {
		return err
	}
	a.Logf("agent listening on vsock port %d", a.Port)
	return nil
}

// serve takes over fd, a listening non-blocking stream socket of any
// family, and starts the accept loop.
func (a *VsockAgent) serve(fd int, name string) error {
	// Non-blocking, so the file is registered with the poller: accept
	// waits in epoll, and Close wakes it.
	ln := os.NewFile(uintptr(fd), name)
	rc, err := ln.SyscallConn()
	if err != nil {
		ln.Close()
		return fmt.Errorf("agent: %w", err)
	}
	a.ln, a.rc = ln, rc
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.accept.Add(1)
	go a.acceptLoop()
	return nil
}

// checkVsockDevice tells a guest with a vsock device from one without: the
// virtio transport registers at boot either way (so socket and listen
// succeed), but reports the guest's CID only once a device is bound.
// Without one the kernel answers VMADDR_CID_ANY, or, with the loopback
// transport built in (our kernel), VMADDR_CID_LOCAL.
func checkVsockDevice() error {
	f, err := os.Open("/dev/vsock")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: /dev/vsock is missing (kernel without CONFIG_VSOCKETS?)", ErrNoVsock)
		}
		return fmt.Errorf("agent: %w", err)
	}
	defer f.Close()
	cid, err := unix.IoctlGetUint32(int(f.Fd()), unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
	if err != nil {
		return fmt.Errorf("agent: /dev/vsock: local CID: %w", err)
	}
	return checkGuestCID(cid)
}

// checkGuestCID accepts a CID a guest can be reached at: 0 to 2 are the
// hypervisor's, the loopback's and the host's, and all ones is "none".
func checkGuestCID(cid uint32) error {
	if cid <= unix.VMADDR_CID_HOST || cid == unix.VMADDR_CID_ANY {
		return fmt.Errorf("%w: the kernel reports CID %d, not a guest's", ErrNoVsock, int32(cid))
	}
	return nil
}

func (a *VsockAgent) acceptLoop() {
	defer a.accept.Done()
	for {
		var (
			nfd  int
			aerr error
		)
		err := a.rc.Read(func(fd uintptr) bool {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return aerr != unix.EAGAIN
		})
		if err != nil {
			return // closed by Stop
		}
		switch {
		case aerr == nil:
		case errors.Is(aerr, unix.EINTR), errors.Is(aerr, unix.ECONNABORTED):
			continue // the caller gave up while queued; keep serving
		case errors.Is(aerr, unix.EMFILE), errors.Is(aerr, unix.ENFILE), errors.Is(aerr, unix.ENOMEM), errors.Is(aerr, unix.ENOBUFS):
			// Out of descriptors or memory: the pending connection
			// stays queued, so retry after a pause rather than spin.
			a.Logf("agent: accept: %v", aerr)
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		default:
			a.Logf("agent: accept: %v: no longer serving", aerr)
			return
		}
		conn := os.NewFile(uintptr(nfd), "vsock-conn")
		a.track(conn, true)
		a.conns.Add(1)
		go func() {
			defer a.conns.Done()
			defer a.track(conn, false)
			if a.BeforeServe != nil {
				a.BeforeServe()
			}
			// A caller that connects and leaves without a request (a
			// liveness probe) is no error worth a console line.
			if err := agent.ServeConn(a.ctx, conn, a.Handler); err != nil && a.ctx.Err() == nil && !errors.Is(err, io.EOF) {
				a.Logf("%v", err)
			}
		}()
	}
}

// Stop stops accepting and waits for the connections: up to grace on their
// own, then up to cancelWait with their contexts cancelled (their commands
// killed), then with their streams cut. It may be
// called on an agent that never started. Should a request still not end
// (a command that survives SIGKILL in the kernel), Stop gives up after
// stopWait: it runs at power-off, which must not hang, and the goroutine
// left waiting ends with the VM.
func (a *VsockAgent) Stop(grace time.Duration) {
	if a.ln == nil {
		return
	}
	a.ln.Close() // wakes the accept loop with an error
	a.accept.Wait()
	done := make(chan struct{})
	go func() {
		a.conns.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		a.cancel()
		return
	case <-t.C:
		a.Logf("agent: requests still running after %v: cancelling them", grace)
	}
	a.cancel()
	// Cancelled requests normally answer at once ("killed"); a stream
	// whose caller stopped reading would block that answer for ever, so
	// what has not ended after cancelWait is cut.
	t.Reset(cancelWait)
	select {
	case <-done:
		return
	case <-t.C:
	}
	a.mu.Lock()
	for f := range a.active {
		f.SetDeadline(time.Unix(1, 0))
	}
	a.mu.Unlock()
	t.Reset(stopWait)
	select {
	case <-done:
	case <-t.C:
		a.Logf("agent: requests did not end %v after cancellation; powering off anyway", stopWait)
	}
}

func (a *VsockAgent) track(f *os.File, on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.active == nil {
		a.active = map[*os.File]struct{}{}
	}
	if on {
		a.active[f] = struct{}{}
	} else {
		delete(a.active, f)
	}
}
