package microhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// Response is what a handler answers: a status and, except for 204, a JSON
// body.
type Response struct {
	Status int
	Body   []byte
}

// Handler serves one parsed request. ctx ends when the server shuts down.
type Handler interface {
	ServeAPI(ctx context.Context, req *Request) Response
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) Response

func (f HandlerFunc) ServeAPI(ctx context.Context, req *Request) Response { return f(ctx, req) }

// Config configures a Server.
type Config struct {
	Handler Handler
	// Fault builds the body of an error answer the server itself gives
	// (a malformed request, a timeout); the API's is {"fault_message": msg}.
	Fault func(msg string) []byte
	// ServerName is sent in the Server header.
	ServerName string
	Limits     Limits
	// HeaderTimeout bounds how long a client may take to send a request's
	// head once it has begun, and BodyTimeout its body: a stalled client
	// gets a 408 and the connection is closed. IdleTimeout bounds a
	// keep-alive connection between requests.
	HeaderTimeout, BodyTimeout, IdleTimeout time.Duration
	// OnProtocolError, if set, is told about every request refused before
	// it reached the handler (for logging).
	OnProtocolError func(status int, msg string)
	// ConfineThread, if set, confines the calling OS thread (volt-vmm
	// installs the api seccomp filter on it). Nothing calls it until
	// Confine; from then on the accept loop and every connection's
	// goroutine lock themselves to their OS thread (runtime.LockOSThread,
	// never undone, so the Go runtime ends the thread with the goroutine
	// instead of giving it to another) and call it before their next
	// accept or read; a new connection's goroutine calls it before its
	// first read. A connection whose call fails is closed, and
	// OnConfineError told; the accept loop's failure ends Serve with it
	// and Confine returns it. With ConfineThread set, Handler never runs
	// on the server's own goroutines: each request is handed to a
	// goroutine of its own, which the connection waits for, so that a
	// confined thread only reads, parses and writes.
	ConfineThread func() error
	// OnConfineError, if set, is told when ConfineThread failed on a
	// connection's thread (the connection is closed).
	OnConfineError func(err error)
	// MaxConns bounds the connections served at once; one more is
	// answered 503 and closed. Each connection holds a goroutine and,
	// once confined, an OS thread of its own, and a jail's pids limit
	// counts threads: without a bound, a client holding connections open
	// could make the runtime's next thread creation fail, which kills
	// the whole VMM.
	MaxConns int
}

// Defaults for the zero fields of Config.
const (
	DefaultMaxHeaderBytes = 16 << 10
	DefaultMaxBodyBytes   = 50 << 10
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultBodyTimeout    = 10 * time.Second
	DefaultIdleTimeout    = 2 * time.Minute
	DefaultMaxConns       = 16
)

// Server serves Handler on one listener.
type Server struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]*connState
	closing bool
	wg      sync.WaitGroup

	// confining is set by Confine: every goroutine of the server
	// confines its thread before its next accept or read. serveEnded is
	// set when Serve returns; acceptDone is closed once the accept loop
	// has confined its thread (acceptErr is the result) or ended.
	confining  bool
	serveEnded bool
	acceptOnce sync.Once
	acceptDone chan struct{}
	acceptErr  error
}

type connState struct {
	busy bool // a request is being handled
}

// New returns a server for cfg; Serve starts it.
func New(cfg Config) *Server {
	if cfg.Limits.MaxHeaderBytes <= 0 {
		cfg.Limits.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.Limits.MaxBodyBytes <= 0 {
		cfg.Limits.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = DefaultHeaderTimeout
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.Fault == nil {
		cfg.Fault = func(msg string) []byte { return []byte(strconv.Quote(msg)) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, ctx: ctx, cancel: cancel, conns: map[net.Conn]*connState{}, acceptDone: make(chan struct{})}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("microhttp: server closed")

// Serve accepts connections on ln until Shutdown, each served on its own
// goroutine that the server waits for. With Config.ConfineThread, ln must
// have a SetDeadline method (as *net.UnixListener has): Confine uses it to
// wake the accept loop.
func (s *Server) Serve(ln net.Listener) error {
	wake, _ := ln.(deadliner)
	if s.cfg.ConfineThread != nil && wake == nil {
		return fmt.Errorf("microhttp: ConfineThread needs a listener with SetDeadline, not %T", ln)
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.serveEnded = true
		s.mu.Unlock()
		s.acceptConfined(nil) // Confine does not wait for a loop that ended
	}()
	confined := false
	for {
		if !confined && s.confineAsked() {
			err := s.confineThread()
			s.acceptConfined(err)
			if err != nil {
				// The goroutine ends locked: its thread ends with it.
				return fmt.Errorf("confine the accept loop's thread: %w", err)
			}
			confined = true
			// Confine set the deadline (under mu) before this loop
			// could see confining; clearing it now is final.
			s.mu.Lock()
			err = wake.SetDeadline(time.Time{})
			s.mu.Unlock()
			if err != nil {
				return fmt.Errorf("accept: clear the deadline: %w", err)
			}
		}
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // Confine woke the loop, or a caller's deadline
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		if len(s.conns) >= s.cfg.MaxConns {
			s.mu.Unlock()
			s.refuseConn(c)
			continue
		}
		st := &connState{}
		s.conns[c] = st
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c, st)
	}
}

type deadliner interface{ SetDeadline(time.Time) error }

// Confine asks every goroutine of the server to confine its OS thread with
// Config.ConfineThread before its next accept or read (idle connections
// and the accept loop are woken for it; a connection busy with a request
// does it before reading the next one). It waits until the accept loop has
// done so and returns its error, or until Serve has ended (nil): a Serve
// that has not started yet confines its thread first when it does, and
// Confine waits for that. Calling it again does nothing more.
func (s *Server) Confine() error {
	if s.cfg.ConfineThread == nil {
		return errors.New("microhttp: Confine without Config.ConfineThread")
	}
	s.mu.Lock()
	if !s.confining {
		s.confining = true
		now := time.Now()
		for c, st := range s.conns {
			if !st.busy {
				c.SetReadDeadline(now)
			}
		}
		if d, ok := s.ln.(deadliner); ok {
			d.SetDeadline(now) // s.ln is set once Serve runs
		}
	}
	ended := s.serveEnded
	s.mu.Unlock()
	if ended {
		return nil
	}
	<-s.acceptDone
	return s.acceptErr
}

func (s *Server) confineAsked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.confining
}

func (s *Server) acceptConfined(err error) {
	s.acceptOnce.Do(func() {
		s.acceptErr = err
		close(s.acceptDone)
	})
}

// confineThread locks the calling goroutine to its thread for good and
// confines the thread.
func (s *Server) confineThread() error {
	runtime.LockOSThread()
	return s.cfg.ConfineThread()
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish until ctx ends, then closes everything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c, st := range s.conns {
		if !st.busy {
			c.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

func (s *Server) serveConn(c net.Conn, st *connState) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	confined := false
	// confine confines this goroutine's thread if Confine asked for it
	// and it is not done yet; false means the connection must end.
	confine := func() bool {
		if confined || !s.confineAsked() {
			return true
		}
		if err := s.confineThread(); err != nil {
			if s.cfg.OnConfineError != nil {
				s.cfg.OnConfineError(err)
			}
			return false // the goroutine ends locked: its thread ends with it
		}
		confined = true
		return true
	}
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 4096)
	for first := true; ; first = false {
		// Between requests the idle timeout applies; once the first
		// byte of a request is in, the header timeout does.
		idle := s.cfg.IdleTimeout
		if first {
			idle = s.cfg.HeaderTimeout
		}
		if !s.awaitRequest(c, r, time.Now().Add(idle), &confined, confine) {
			return // closed, idle too long, shut down, or not confined
		}
		if !s.setBusy(st, true) {
			return
		}
		// A Confine that came while the request's first bytes arrived
		// still confines the thread before they are parsed.
		if !confine() {
			return
		}
		c.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
		keep := s.serveOne(c, r, w)
		if !s.setBusy(st, false) || !keep {
			return
		}
	}
}

// awaitRequest waits until the next request's first byte is in, or
// deadline. A Confine while it waits wakes it (Confine moves an idle
// connection's deadline to now) to confine the thread before it reads on.
// It returns false when the connection should end.
func (s *Server) awaitRequest(c net.Conn, r *bufio.Reader, deadline time.Time, confined *bool, confine func() bool) bool {
	for {
		// The deadline is set under mu, where Confine sets it too, and
		// only while Confine has not been asked for or the thread is
		// confined: a Confine after this point wakes the read below.
		s.mu.Lock()
		need := s.confining && !*confined
		if !need {
			c.SetReadDeadline(deadline)
		}
		s.mu.Unlock()
		if need {
			if !confine() {
				return false
			}
			continue
		}
		wasConfined := *confined
		_, err := r.Peek(1)
		if err == nil {
			return true
		}
		var ne net.Error
		if !wasConfined && errors.As(err, &ne) && ne.Timeout() && s.confineAsked() && time.Now().Before(deadline) {
			continue // woken by Confine
		}
		return false
	}
}

// setBusy marks the connection; it returns false when the server is
// shutting down and an idle connection should end instead.
func (s *Server) setBusy(st *connState, busy bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.busy = busy
	return !s.closing
}

// serveOne reads, handles and answers one request; it returns whether the
// connection may carry another.
func (s *Server) serveOne(c net.Conn, r *bufio.Reader, w *bufio.Writer) bool {
	req, err := readHead(r, s.cfg.Limits)
	if err != nil {
		s.refuse(c, w, err, "")
		return false
	}
	if req.contentLength > 0 {
		if req.expectsContinue() {
			io.WriteString(w, req.Proto+" 100 Continue\r\n\r\n")
			if w.Flush() != nil {
				return false
			}
		}
		c.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout))
		req.Body = make([]byte, req.contentLength)
		if _, err := io.ReadFull(r, req.Body); err != nil {
			s.refuse(c, w, err, req.Proto)
			return false
		}
	}
	c.SetReadDeadline(time.Time{})
	resp := s.handle(req)
	keep := req.keepAlive
	s.mu.Lock()
	keep = keep && !s.closing
	s.mu.Unlock()
	if err := s.write(w, req.Proto, resp, keep); err != nil {
		return false
	}
	return keep
}

// handle runs the handler: on this goroutine, or, with ConfineThread, on
// a goroutine of its own (not locked, so not on a confined thread) that
// this one waits for. The work a request asks for (a snapshot, a device's
// configuration) needs far more system calls than a confined thread
// allows.
func (s *Server) handle(req *Request) Response {
	if s.cfg.ConfineThread == nil {
		return s.cfg.Handler.ServeAPI(s.ctx, req)
	}
	done := make(chan Response, 1)
	go func() { done <- s.cfg.Handler.ServeAPI(s.ctx, req) }()
	return <-done
}

// refuse answers a request that never reached the handler and closes the
// connection: after a framing error nothing later on it can be trusted.
func (s *Server) refuse(c net.Conn, w *bufio.Writer, err error, proto string) {
	if errors.Is(err, io.EOF) {
		return
	}
	status, msg := 400, err.Error()
	var pe *ProtocolError
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		status, msg = pe.Status, pe.Msg
	case errors.As(err, &ne) && ne.Timeout():
		status, msg = 408, "the request was not received in time"
	case errors.Is(err, io.ErrUnexpectedEOF):
		msg = "the connection closed before the whole request body arrived"
	}
	if s.cfg.OnProtocolError != nil {
		s.cfg.OnProtocolError(status, msg)
	}
	if proto == "" {
		proto = "HTTP/1.1"
	}
	// The client may have stopped reading; do not wait for it forever.
	c.SetWriteDeadline(time.Now().Add(time.Second))
	s.write(w, proto, Response{Status: status, Body: s.cfg.Fault(msg)}, false)
}

// refuseConn answers a connection over Config.MaxConns with a 503 and
// closes it, on the accept loop: the write is bounded by a short deadline
// so that a client that does not read cannot stall accepting.
func (s *Server) refuseConn(c net.Conn) {
	msg := fmt.Sprintf("too many API connections at once (at most %d): close one and retry", s.cfg.MaxConns)
	if s.cfg.OnProtocolError != nil {
		s.cfg.OnProtocolError(503, msg)
	}
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	s.write(bufio.NewWriterSize(c, 512), "HTTP/1.1", Response{Status: 503, Body: s.cfg.Fault(msg)}, false)
	c.Close()
}

func (s *Server) write(w *bufio.Writer, proto string, resp Response, keep bool) error {
	fmt.Fprintf(w, "%s %d %s\r\n", proto, resp.Status, statusText(resp.Status))
	if s.cfg.ServerName != "" {
		fmt.Fprintf(w, "Server: %s\r\n", s.cfg.ServerName)
	}
	if !keep {
		io.WriteString(w, "Connection: close\r\n")
	} else if proto == "HTTP/1.0" {
		io.WriteString(w, "Connection: keep-alive\r\n")
	}
	if resp.Status != 204 && resp.Status >= 200 {
		fmt.Fprintf(w, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(resp.Body))
	}
	io.WriteString(w, "\r\n")
	if resp.Status != 204 {
		w.Write(resp.Body)
	}
	return w.Flush()
}

func statusText(code int) string {
	switch code {
	case 100:
		return "Continue"
	case 200:
		return "OK"
	case 204:
		return "No Content"
	case 400:
		return "Bad Request"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 413:
		return "Payload Too Large"
	case 431:
		return "Request Header Fields Too Large"
	case 500:
		return "Internal Server Error"
	case 501:
		return "Not Implemented"
	case 503:
		return "Service Unavailable"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Status " + strconv.Itoa(code)
}
