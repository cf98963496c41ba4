package voltinit

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TimerfdTicker fires every period through a timerfd that Go's network
// poller waits on.
//
// It exists because every cheaper-looking way to sleep in Go costs more
// system calls per tick, and each system call costs hundreds of emulated
// instructions where guest ring 0 is emulated (guest/README.md): a Go timer
// also wakes the runtime's sysmon thread at every expiry; a goroutine locked
// to its own thread must be handed between threads (futex wake-ups) each
// time; a blocking read enters the scheduler's system-call path, which wakes
// sysmon, which then polls until it can retake the P. Here the idle runtime
// blocks in epoll_pwait as it would anyway, the tick is one raw read of the
// timerfd's counter (rawRead8, which does not enter the scheduler), and
// sysmon keeps sleeping.
type TimerfdTicker struct {
	f  *os.File
	rc syscall.RawConn
}

// NewTimerfdTicker starts a ticker on CLOCK_MONOTONIC.
func NewTimerfdTicker(period time.Duration) (*TimerfdTicker, error) {
	if period <= 0 {
		return nil, fmt.Errorf("ticker period %v: must be positive", period)
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	ts := unix.NsecToTimespec(period.Nanoseconds())
	if err := unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("timerfd: arm: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd") // non-blocking: registered with the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	return &TimerfdTicker{f: f, rc: rc}, nil
}

// Each calls fn at every expiry until the ticker is closed; expiries missed
// while fn ran count as one. It returns the error that ended the wait
// (os.ErrClosed, or rather poll's "use of closed file", after Close).
//
// The whole loop is one RawConn.Read: the poller's readiness is reset when
// a Read begins, so a Read per tick would have to try the read once more
// (EAGAIN) before it waits, a system call per tick for nothing.
func (t *TimerfdTicker) Each(fn func()) error {
	var rerr error
	err := t.rc.Read(func(fd uintptr) bool {
		var n uint64
		switch _, errno := rawRead8(int(fd), &n); errno {
		case 0:
			fn()
			return false // wait for the next expiry
		case unix.EAGAIN, unix.EINTR:
			return false
		default:
			rerr = fmt.Errorf("timerfd read: %w", errno)
			return true
		}
	})
	if rerr != nil {
		return rerr
	}
	return err
}

// Close stops the ticker; a Wait in progress returns an error.
func (t *TimerfdTicker) Close() error {
	if err := t.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
