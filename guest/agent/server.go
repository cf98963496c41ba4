package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Handler runs one request. It writes the command's output to stdout and
// stderr as it comes (each Write becomes frames of at most MaxPayload) and
// returns how the command ended. ctx ends when the request's time limit
// passes or the caller goes away; the handler must then stop the command.
type Handler interface {
	Run(ctx context.Context, req Request, stdout, stderr io.Writer) Status
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req Request, stdout, stderr io.Writer) Status

func (f HandlerFunc) Run(ctx context.Context, req Request, stdout, stderr io.Writer) Status {
	return f(ctx, req, stdout, stderr)
}

// Server limits. A caller has RequestTimeout to send its request after it
// connects (a connection that says nothing holds no agent resources for
// long); a request without a time limit gets DefaultTimeout.
const (
	RequestTimeout = 10 * time.Second
	DefaultTimeout = 5 * time.Minute
)

// Conn is what ServeConn needs of a stream: a net.Conn, or an *os.File of
// a non-blocking socket (the guest side of vsock, which Go's net package
// cannot wrap: accept4 with SOCK_NONBLOCK, then os.NewFile).
type Conn interface {
	io.ReadWriteCloser
	SetReadDeadline(t time.Time) error
}

// ServeConn answers the one request on conn, then closes conn. It returns
// the error that ended the exchange (nil once the exit frame was sent): a
// malformed request is answered with a NotRun status when its frame could
// be read at all, and the error is returned too.
func ServeConn(ctx context.Context, conn Conn, h Handler) error {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(RequestTimeout))
	hdr := make([]byte, HeaderSize)
	buf := make([]byte, MaxPayload)
	fh, p, err := readFrame(conn, hdr, buf)
	if err != nil {
		return fmt.Errorf("agent: read request: %w", err)
	}
	conn.SetReadDeadline(time.Time{})
	if fh.Type != FrameRequest {
		err := protocolError("first frame has type %#02x, want a request (%#02x)", fh.Type, FrameRequest)
		writeFrame(conn, FrameExit, Status{Kind: NotRun, Message: err.Error()}.encode())
		return fmt.Errorf("agent: %w", err)
	}
	req, err := DecodeRequest(p)
	if err != nil {
		writeFrame(conn, FrameExit, Status{Kind: NotRun, Message: err.Error()}.encode())
		return fmt.Errorf("agent: %w", err)
	}
	if len(req.Args) == 0 {
		return writeFrame(conn, FrameExit, Status{Kind: Exited}.encode())
	}

	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The caller sends nothing after its request: a read that returns
	// means it closed its end or broke the protocol, and either way the
	// command is no longer wanted.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var one [1]byte
		conn.Read(one[:])
		cancel()
	}()
	out := &frameWriter{conn: conn}
	st := h.Run(runCtx, req, out.stream(FrameStdout), out.stream(FrameStderr))
	if st.Kind != NotRun && errors.Is(runCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		st = Status{Kind: TimedOut, Message: fmt.Sprintf("killed after %v", timeout)}
	}
	werr := out.write(FrameExit, st.encode())
	// Unblock the watcher: its Read ends with the deadline.
	conn.SetReadDeadline(time.Unix(1, 0))
	wg.Wait()
	if werr != nil {
		return fmt.Errorf("agent: send status: %w", werr)
	}
	if err := out.failed(); err != nil {
		return fmt.Errorf("agent: send output: %w", err)
	}
	return nil
}

// Serve accepts connections on ln and answers each in its own goroutine
// until ctx ends or ln fails; it closes ln and waits for the requests in
// flight (whose contexts it cancels) before it returns.
func Serve(ctx context.Context, ln net.Listener, h Handler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			ln.Close()
			return fmt.Errorf("agent: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ServeConn(ctx, conn, h)
		}()
	}
}

// frameWriter serialises the frames of one connection; after the first
// failed write it drops output (the handler keeps running until its
// context ends, which the watcher's failed read causes).
type frameWriter struct {
	mu   sync.Mutex
	conn Conn
	err  error
}

func (w *frameWriter) write(typ uint8, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if err := writeFrame(w.conn, typ, p); err != nil {
		w.err = err
		w.conn.SetReadDeadline(time.Unix(1, 0)) // wake the watcher: cancel the command
	}
	return w.err
}

func (w *frameWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *frameWriter) stream(typ uint8) io.Writer { return streamWriter{w, typ} }

type streamWriter struct {
	w   *frameWriter
	typ uint8
}

func (s streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxPayload)]
		if err := s.w.write(s.typ, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}
