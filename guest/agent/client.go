package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// DefaultMaxOutput bounds the standard output plus standard error a Client
// keeps of one command.
const DefaultMaxOutput = 16 << 20

// ErrOutputLimit is returned (with what was read so far) when a command
// writes more than the client keeps; the connection is closed, which makes
// the agent kill the command.
var ErrOutputLimit = errors.New("command output exceeds the client's limit")

// Result is what a command did.
type Result struct {
	Status
	Stdout, Stderr []byte
}

// Client runs requests over connections the caller dials (a vsock stream
// after Firecracker's CONNECT handshake, or any net.Conn in tests). The zero
// value is ready to use.
type Client struct {
	// MaxOutput bounds stdout plus stderr kept per command;
	// 0 means DefaultMaxOutput.
	MaxOutput int
	// Stdout and Stderr, when set, receive output as it arrives instead
	// of it being kept in the Result (MaxOutput still bounds it).
	Stdout, Stderr io.Writer
}

// Run sends req on conn, reads the answer until its exit frame and closes
// nothing: the caller owns conn (one request per connection; the agent
// closes its end after the exit frame). ctx's deadline and cancellation
// interrupt the exchange.
func (c *Client) Run(ctx context.Context, conn net.Conn, req Request) (Result, error) {
	payload, err := req.Encode()
	if err != nil {
		return Result{}, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	wrap := func(err error) error {
		if e := ended(ctx, err); e != nil {
			return fmt.Errorf("agent request %q: %w (%v)", req.Args, e, err)
		}
		return fmt.Errorf("agent request %q: %w", req.Args, err)
	}
	if err := writeFrame(conn, FrameRequest, payload); err != nil {
		return Result{}, wrap(fmt.Errorf("send: %w", err))
	}
	limit := c.MaxOutput
	if limit <= 0 {
		limit = DefaultMaxOutput
	}
	var res Result
	hdr := make([]byte, HeaderSize)
	buf := make([]byte, MaxPayload)
	total := 0
	for {
		h, p, err := readFrame(conn, hdr, buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("the agent closed the stream before its exit frame: %w", io.ErrUnexpectedEOF)
			}
			return res, wrap(err)
		}
		switch h.Type {
		case FrameStdout, FrameStderr:
			total += len(p)
			if total > limit {
				return res, wrap(fmt.Errorf("%w (%d bytes)", ErrOutputLimit, limit))
			}
			w, dst := c.Stdout, &res.Stdout
			if h.Type == FrameStderr {
				w, dst = c.Stderr, &res.Stderr
			}
			if w != nil {
				if _, err := w.Write(p); err != nil {
					return res, wrap(fmt.Errorf("write output: %w", err))
				}
			} else {
				*dst = append(*dst, p...)
			}
		case FrameExit:
			s, err := DecodeStatus(p)
			if err != nil {
				return res, wrap(err)
			}
			res.Status = s
			return res, nil
		default:
			return res, wrap(protocolError("the agent sent frame type %#02x", h.Type))
		}
	}
}

// Ping sends an empty request and waits for its exit frame: true once an
// agent answers on conn.
func Ping(ctx context.Context, conn net.Conn) error {
	var c Client
	res, err := c.Run(ctx, conn, Request{})
	if err != nil {
		return err
	}
	if !res.Success() {
		return fmt.Errorf("agent ping: %v", res.Status)
	}
	return nil
}
