package microhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
}

// Defaults for the zero fields of Config.
const (
	DefaultMaxHeaderBytes = 16 << 10
	DefaultMaxBodyBytes   = 50 << 10
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultBodyTimeout    = 10 * time.Second
	DefaultIdleTimeout    = 2 * time.Minute
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
	if cfg.Fault == nil {
		cfg.Fault = func(msg string) []byte { return []byte(strconv.Quote(msg)) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, ctx: ctx, cancel: cancel, conns: map[net.Conn]*connState{}}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("microhttp: server closed")

// Serve accepts connections on ln until Shutdown, each served on its own
// goroutine that the server waits for.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	for {
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
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		st := &connState{}
		s.conns[c] = st
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c, st)
	}
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
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 4096)
	for first := true; ; first = false {
		// Between requests the idle timeout applies; once the first
		// byte of a request is in, the header timeout does.
		idle := s.cfg.IdleTimeout
		if first {
			idle = s.cfg.HeaderTimeout
		}
		c.SetReadDeadline(time.Now().Add(idle))
		if _, err := r.Peek(1); err != nil {
			return // closed, idle too long, or shut down
		}
		if !s.setBusy(st, true) {
			return
		}
		c.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
		keep := s.serveOne(c, r, w)
		if !s.setBusy(st, false) || !keep {
			return
		}
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
	resp := s.cfg.Handler.ServeAPI(s.ctx, req)
	keep := req.keepAlive
	s.mu.Lock()
	keep = keep && !s.closing
	s.mu.Unlock()
	if err := s.write(w, req.Proto, resp, keep); err != nil {
		return false
	}
	return keep
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
