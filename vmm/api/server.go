package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/voltvmm/volt/vmm/api/microhttp"
	"github.com/voltvmm/volt/vmm/api/types"
)

// Server serves the API on a Unix socket.
type Server struct {
	path    string
	ln      *net.UnixListener
	maxBody int64
	http    *microhttp.Server
	done    chan error
	// confineThread, if set, confines the calling thread (SetThreadFilter).
	confineThread func() error
}

// CheckSocketPath refuses a socket path the kernel cannot bind, with a
// message that says why instead of bind's "invalid argument".
func CheckSocketPath(path string) error {
	if path == "" {
		return errors.New("empty socket path")
	}
	if len(path) > types.MaxSocketPath {
		return fmt.Errorf("socket path %s is %d bytes long; a Unix socket path can be at most %d (use a shorter directory)", path, len(path), types.MaxSocketPath)
	}
	return nil
}

// Listen creates the API socket at path. A socket file left behind by a
// dead process is replaced; anything else at path (a regular file, or a
// socket some live process still serves) is an error, never deleted.
// maxBody bounds request bodies (Firecracker's
// --http-api-max-payload-size); 0 means types.MaxBodySize.
func Listen(path string, maxBody int64) (*Server, error) {
	if err := CheckSocketPath(path); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if maxBody <= 0 {
		maxBody = types.MaxBodySize
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	// The socket file is removed when the listener closes.
	ln.SetUnlinkOnClose(true)
	return &Server{path: path, ln: ln, maxBody: maxBody}, nil
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

// SetThreadFilter makes the server confine its own threads with install
// (volt-vmm: the api seccomp filter) once Confine is called: the accept
// loop's thread and each connection's, which then only accept, read,
// parse and write, while each request runs on a goroutine of its own
// under the process's filter (microhttp.Config.ConfineThread). Call it
// before Start.
func (s *Server) SetThreadFilter(install func() error) { s.confineThread = install }

// Confine confines the server's threads with the SetThreadFilter function:
// the accept loop's at once (its error is returned: the API would otherwise
// go on unconfined), every connection's before it reads its next request
// (a connection whose thread cannot be confined is closed and logged).
// Call it once the process's own filter is in place.
func (s *Server) Confine() error {
	if s.confineThread == nil || s.http == nil {
		return errors.New("api: Confine before SetThreadFilter and Start")
	}
	if err := s.http.Confine(); err != nil {
		return fmt.Errorf("api server: %w", err)
	}
	return nil
}

// Start serves h on its own goroutine until Shutdown. Requests the server
// refuses before they reach h (malformed, too large, too slow) get the same
// JSON fault body as the API's own errors, and are logged to log.
func (s *Server) Start(h microhttp.Handler, log *slog.Logger) {
	s.http = microhttp.New(microhttp.Config{
		Handler:    h,
		Fault:      Fault,
		ServerName: AppName,
		Limits:     microhttp.Limits{MaxBodyBytes: s.maxBody},
		OnProtocolError: func(status int, msg string) {
			if log != nil {
				log.Warn("api request refused", "status", status, "err", msg)
			}
		},
		ConfineThread: s.confineThread,
		OnConfineError: func(err error) {
			if log != nil {
				log.Error("api connection closed: its thread could not be confined", "err", err)
			}
		},
	})
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
	if serveErr := <-s.done; serveErr != nil && !errors.Is(serveErr, microhttp.ErrServerClosed) {
		return errors.Join(err, serveErr)
	}
	return err
}
