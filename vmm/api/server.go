package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"time"
)

// Server serves the API on a Unix socket.
type Server struct {
	path string
	ln   *net.UnixListener
	http *http.Server
	done chan error
}

// Timeouts that keep a slow or stuck client from holding a connection
// forever; requests themselves are small and quick.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 16 << 10
)

// Listen creates the API socket at path. A socket file left behind by a
// dead process is replaced; anything else at path (a regular file, or a
// socket some live process still serves) is an error, never deleted.
func Listen(path string) (*Server, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	// The socket file is removed when the listener closes.
	ln.SetUnlinkOnClose(true)
	return &Server{path: path, ln: ln}, nil
}

func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("api socket %s: the path exists and is not a socket; not replacing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("api socket %s: another process is serving it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("api socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// Path is the socket's file name.
func (s *Server) Path() string { return s.path }

// Start serves h on its own goroutine until Shutdown.
func (s *Server) Start(h http.Handler) {
	s.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.http.Serve(s.ln) }()
}

// Shutdown stops accepting requests, lets those in flight finish until ctx
// ends, and removes the socket file.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.http == nil {
		return s.ln.Close()
	}
	err := s.http.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = s.http.Close()
	}
	if serveErr := <-s.done; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return errors.Join(err, serveErr)
	}
	return err
}
