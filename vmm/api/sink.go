package api

import (
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"
)

// sinkWriteTimeout bounds how long one write to a FIFO may wait for its
// reader: a metrics or log consumer that stops reading must not hang the
// API (or, through the logger, anything else).
const sinkWriteTimeout = time.Second

// sink is a file or a named pipe that metrics or log lines are written to.
type sink struct {
	mu   sync.Mutex
	f    *os.File
	fifo bool
}

// openSink opens path for appending lines. A FIFO is opened read-write and
// non-blocking: opening never waits for a reader (a write-only open of a
// FIFO would block, or fail with ENXIO when non-blocking), and writes go
// through Go's poller so that a deadline can end them. Anything else is a
// regular file, created if absent.
func openSink(path string) (*sink, error) {
	st, err := os.Stat(path)
	switch {
	case err == nil && st.Mode()&fs.ModeNamedPipe != 0:
		f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open FIFO %s: %w", path, err)
		}
		return &sink{f: f, fifo: true}, nil
	case err == nil && !st.Mode().IsRegular():
		return nil, fmt.Errorf("%s is neither a regular file nor a FIFO", path)
	case err != nil && !os.IsNotExist(err):
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	// Non-blocking, then checked: a FIFO put there since the Stat must
	// not hang the open, and nothing but a regular file is appended to.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s changed while it was opened: no longer a regular file", path)
	}
	return &sink{f: f}, nil
}

// Write writes p whole or fails; on a FIFO it gives up after
// sinkWriteTimeout.
func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return 0, os.ErrClosed
	}
	if s.fifo {
		if err := s.f.SetWriteDeadline(time.Now().Add(sinkWriteTimeout)); err != nil {
			return 0, err
		}
	}
	n, err := s.f.Write(p)
	if err != nil && os.IsTimeout(err) {
		return n, fmt.Errorf("write %s: nobody drained the FIFO within %v", s.f.Name(), sinkWriteTimeout)
	}
	return n, err
}

func (s *sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
