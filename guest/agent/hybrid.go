package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// maxHandshakeLine bounds the VMM's "OK <hostport>\n" answer: "OK " and a
// 32-bit port in decimal fit in 14 bytes.
const maxHandshakeLine = 32

// DialHybrid connects to port of the guest behind a Firecracker-style hybrid
// vsock Unix socket (the VMM's uds_path): it writes "CONNECT <port>\n" and
// reads the VMM's "OK <hostport>\n", byte by byte so that nothing of the
// stream after it is consumed. The returned connection is the byte stream to
// the guest's listener.
func DialHybrid(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("vsock %s: %w", udsPath, err)
	}
	if err := handshake(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock %s port %d: %w", udsPath, port, err)
	}
	return conn, nil
}

// ended reports why ctx ended when an operation on a connection whose
// deadline is ctx's failed with err, or nil when it has not ended. The
// connection's timer can fire a moment before ctx's own, and ctx.Err() is
// then still nil: a read cut short by the deadline was reported as the
// guest having nothing listening, and callers retried with a spent context.
func ended(ctx context.Context, err error) error {
	if e := ctx.Err(); e != nil {
		return e
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return nil
}

func handshake(ctx context.Context, conn net.Conn, port uint32) error {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		if e := ended(ctx, err); e != nil {
			return e
		}
		return fmt.Errorf("send CONNECT: %w", err)
	}
	line := make([]byte, 0, maxHandshakeLine)
	var one [1]byte
	for {
		if _, err := conn.Read(one[:]); err != nil {
			if e := ended(ctx, err); e != nil {
				return fmt.Errorf("no answer to CONNECT in time (is an agent listening in the guest?): %w", e)
			}
			// Firecracker closes the connection when nothing listens on
			// the port.
			return fmt.Errorf("no answer to CONNECT (nothing listening on the port in the guest?): %w", err)
		}
		if one[0] == '\n' {
			break
		}
		if len(line) == maxHandshakeLine {
			return fmt.Errorf("%w: answer to CONNECT longer than %d bytes: %q", ErrProtocol, maxHandshakeLine, line)
		}
		line = append(line, one[0])
	}
	rest, ok := bytes.CutPrefix(line, []byte("OK "))
	if !ok {
		return fmt.Errorf("%w: answer to CONNECT is %q, want \"OK <port>\"", ErrProtocol, line)
	}
	if _, err := strconv.ParseUint(string(rest), 10, 32); err != nil {
		return fmt.Errorf("%w: answer to CONNECT is %q, want \"OK <port>\"", ErrProtocol, line)
	}
	return nil
}
