package agent

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func FuzzDecodeRequest(f *testing.F) {
	for _, r := range []Request{{}, {Args: []string{"echo", "hi"}}, {Args: []string{"sh"}, Env: []string{"A=1"}, Stdin: []byte("x"), Timeout: time.Second}} {
		p, _ := r.Encode()
		f.Add(p)
	}
	f.Add([]byte("VAGT\x01\x00\xff\xff"))
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := DecodeRequest(p)
		if err != nil {
			return
		}
		// Whatever decodes must encode back to the same bytes.
		q, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		if !bytes.Equal(p, q) {
			t.Fatalf("re-encoding differs:\n% x\n% x", p, q)
		}
	})
}

func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{2, 0, 0, 0, FrameStdout, 0, 0, 0})
	f.Add([]byte{0, 0, 1, 0, FrameExit, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err == nil && h.Length > MaxPayload {
			t.Fatalf("accepted length %d", h.Length)
		}
	})
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add(Status{Kind: Exited, Code: 3}.encode())
	f.Add(Status{Kind: NotRun, Message: "why"}.encode())
	f.Fuzz(func(t *testing.T, p []byte) {
		s, err := DecodeStatus(p)
		if err != nil {
			return
		}
		if !bytes.Equal(s.encode(), p) {
			t.Fatalf("status %+v re-encodes differently", s)
		}
	})
}

// FuzzClientAnswer feeds the client arbitrary bytes as the agent's answer:
// it must return (a result or an error), never hang or panic.
func FuzzClientAnswer(f *testing.F) {
	f.Add(append([]byte{3, 0, 0, 0, FrameStdout, 0, 0, 0, 'a', 'b', 'c'}, append([]byte{8, 0, 0, 0, FrameExit, 0, 0, 0}, Status{Kind: Exited}.encode()...)...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, FrameStdout, 0, 0, 0})
	f.Fuzz(func(t *testing.T, answer []byte) {
		a, b := net.Pipe()
		defer a.Close()
		go func() {
			hdr, buf := make([]byte, HeaderSize), make([]byte, MaxPayload)
			readFrame(b, hdr, buf)
			b.Write(answer)
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c := Client{MaxOutput: 1 << 20}
		c.Run(ctx, a, Request{Args: []string{"x"}})
		if ctx.Err() != nil {
			t.Fatal("the client hung on a finite answer")
		}
	})
}

// FuzzServeConn feeds the server arbitrary bytes as a request (then closes
// the caller's write side): it answers or closes, never panics, and runs the
// handler only for valid requests.
func FuzzServeConn(f *testing.F) {
	good, _ := Request{Args: []string{"x"}}.Encode()
	f.Add(append([]byte{byte(len(good)), 0, 0, 0, FrameRequest, 0, 0, 0}, good...))
	f.Add([]byte{0, 0, 0, 0, FrameRequest, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := socketPair(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			ServeConn(context.Background(), b, HandlerFunc(func(_ context.Context, r Request, _, _ io.Writer) Status {
				if len(r.Args) == 0 {
					t.Error("handler called for a ping")
				}
				return Status{Kind: Exited}
			}))
		}()
		a.SetDeadline(time.Now().Add(5 * time.Second))
		a.Write(in)
		a.CloseWrite()
		io.Copy(io.Discard, a)
		a.Close()
		<-done
	})
}

// socketPair returns both ends of a connected Unix stream socket pair.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}
