package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{
		{},
		{Args: []string{"true"}},
		{Args: []string{"sh", "-c", "echo $X", ""}, Env: []string{"X=1", "EMPTY="}, Stdin: []byte("in\x00put"), Timeout: 1500 * time.Millisecond},
		{Args: []string{strings.Repeat("a", 60000)}},
	} {
		p, err := r.Encode()
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		got, err := DecodeRequest(p)
		if err != nil {
			t.Fatalf("decode %+v: %v", r, err)
		}
		if !equalStrings(got.Args, r.Args) || !equalStrings(got.Env, r.Env) || !bytes.Equal(got.Stdin, r.Stdin) || got.Timeout != r.Timeout {
			t.Errorf("round trip: got %+v, want %+v", got, r)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRequestValidateRefuses(t *testing.T) {
	for name, r := range map[string]Request{
		"empty command":  {Args: []string{""}},
		"NUL in arg":     {Args: []string{"a", "b\x00c"}},
		"env without =":  {Args: []string{"a"}, Env: []string{"X"}},
		"env empty key":  {Args: []string{"a"}, Env: []string{"=1"}},
		"negative limit": {Args: []string{"a"}, Timeout: -time.Second},
		"limit too long": {Args: []string{"a"}, Timeout: 25 * time.Hour},
		"sub-ms limit":   {Args: []string{"a"}, Timeout: 1500 * time.Microsecond},
		"too large":      {Args: []string{"a"}, Stdin: make([]byte, MaxPayload)},
		"too many args":  {Args: make([]string, MaxArgs+1)},
	} {
		if name == "too many args" {
			for i := range r.Args {
				r.Args[i] = "x"
			}
		}
		if _, err := r.Encode(); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

func TestDecodeRequestRejects(t *testing.T) {
	good, err := Request{Args: []string{"echo", "hi"}, Env: []string{"A=b"}, Stdin: []byte("x")}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name, want string
		p          []byte
	}{
		{"short", "shorter than its fixed part", good[:10]},
		{"magic", "magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"version", "version 2", mutate(func(b []byte) []byte { b[4] = 2; return b })},
		{"flags", "flags", mutate(func(b []byte) []byte { b[10] = 1; return b })},
		{"argc past end", "request ends inside", mutate(func(b []byte) []byte { b[6] = 3; return b })},
		{"string length past end", "runs past", mutate(func(b []byte) []byte { b[20] = 0xff; return b })},
		{"stdin length", "standard input", mutate(func(b []byte) []byte { b[16] = 2; return b })},
		{"trailing byte", "standard input", append(append([]byte(nil), good...), 'z')},
		{"timeout", "timeout", mutate(func(b []byte) []byte { b[15] = 0xff; return b })},
		{"NUL", "NUL", mutate(func(b []byte) []byte { b[23] = 0; return b })},
	} {
		_, err := DecodeRequest(tc.p)
		if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an ErrProtocol saying %q", tc.name, err, tc.want)
		}
	}
}

func TestParseHeaderRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"short":    {1, 0, 0},
		"type":     {0, 0, 0, 0, 0x7f, 0, 0, 0},
		"reserved": {0, 0, 0, 0, FrameStdout, 0, 1, 0},
		"too long": {0x01, 0x00, 0x01, 0x00, FrameStdout, 0, 0, 0}, // 65537
	} {
		if _, err := ParseHeader(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if h, err := ParseHeader([]byte{0x00, 0x00, 0x01, 0x00, FrameStderr, 0, 0, 0}); err != nil || h.Length != MaxPayload {
		t.Errorf("the largest frame: %+v %v", h, err)
	}
}

func TestStatusRoundTripAndLimits(t *testing.T) {
	for _, s := range []Status{{Kind: Exited}, {Kind: Exited, Code: 255}, {Kind: Signaled, Code: 9}, {Kind: NotRun, Message: "no such file"}, {Kind: TimedOut, Code: -1}} {
		got, err := DecodeStatus(s.encode())
		if err != nil || got != s {
			t.Errorf("%+v: got %+v, %v", s, got, err)
		}
	}
	long := Status{Kind: NotRun, Message: strings.Repeat("é", MaxMessage)}
	got, err := DecodeStatus(long.encode())
	if err != nil || len(got.Message) > MaxMessage || !strings.HasPrefix(long.Message, got.Message) {
		t.Errorf("long message: %d bytes, %v", len(got.Message), err)
	}
	for name, p := range map[string][]byte{
		"short":    {0, 0, 0},
		"kind":     {9, 0, 0, 0, 0, 0, 0, 0},
		"reserved": {0, 1, 0, 0, 0, 0, 0, 0},
		"utf8":     {2, 0, 0, 0, 0, 0, 0, 0, 0xff},
	} {
		if _, err := DecodeStatus(p); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// serve starts ServeConn with h on one end of a Unix socket pair (the
// stream semantics of vsock) and returns the other end.
func serve(t *testing.T, h Handler) (net.Conn, <-chan error) {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		done <- ServeConn(context.Background(), c, h)
	}()
	conn, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, done
}

func TestExecHandlerThroughTheProtocol(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	big := strings.Repeat("x", 320000) // several frames
	for _, tc := range []struct {
		name           string
		req            Request
		want           Status
		stdout, stderr string
	}{
		{"echo", Request{Args: []string{"echo", "hello", "world"}}, Status{Kind: Exited}, "hello world\n", ""},
		{"exit status and stderr", Request{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}}, Status{Kind: Exited, Code: 7}, "out\n", "err\n"},
		{"stdin and env", Request{Args: []string{"sh", "-c", "cat; echo $GREETING"}, Env: []string{"GREETING=hi"}, Stdin: []byte("from stdin\n")}, Status{Kind: Exited}, "from stdin\nhi\n", ""},
		{"signal", Request{Args: []string{"sh", "-c", "kill -9 $$"}}, Status{Kind: Signaled, Code: 9}, "", ""},
		{"large output", Request{Args: []string{"sh", "-c", `head -c 320000 /dev/zero | tr "\000" x`}}, Status{Kind: Exited}, big, ""},
		{"timeout", Request{Args: []string{"sleep", "10"}, Timeout: 100 * time.Millisecond}, Status{Kind: TimedOut, Message: "killed after 100ms"}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, done := serve(t, ExecHandler{})
			var c Client
			res, err := c.Run(context.Background(), conn, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.want || string(res.Stdout) != tc.stdout || string(res.Stderr) != tc.stderr {
				t.Errorf("got %+v stdout %d bytes %.40q stderr %q; want %+v %.40q %q", res.Status, len(res.Stdout), res.Stdout, res.Stderr, tc.want, tc.stdout, tc.stderr)
			}
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
		})
	}
}

func TestNotFoundIsNotRun(t *testing.T) {
	conn, _ := serve(t, ExecHandler{})
	var c Client
	res, err := c.Run(context.Background(), conn, Request{Args: []string{"/no/such/command"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != NotRun || !strings.Contains(res.Message, "no such file") {
		t.Errorf("got %+v", res.Status)
	}
}

func TestPing(t *testing.T) {
	called := false
	conn, done := serve(t, HandlerFunc(func(context.Context, Request, io.Writer, io.Writer) Status {
		called = true
		return Status{Kind: Exited, Code: 1}
	}))
	if err := Ping(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || called {
		t.Errorf("server %v, handler called %v", err, called)
	}
}

// A client that gives up (cancels) makes the agent stop the command.
func TestCallerGoneStopsTheCommand(t *testing.T) {
	started := make(chan struct{})
	stopped := make(chan error, 1)
	conn, done := serve(t, HandlerFunc(func(ctx context.Context, _ Request, _, _ io.Writer) Status {
		close(started)
		<-ctx.Done()
		stopped <- ctx.Err()
		return Status{Kind: Signaled, Code: 9}
	}))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		var c Client
		_, err := c.Run(ctx, conn, Request{Args: []string{"forever"}})
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client: %v, want context.Canceled", err)
	}
	conn.Close()
	select {
	case err := <-stopped:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler context: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler still runs after its caller went away")
	}
	<-done
}

func TestOutputLimit(t *testing.T) {
	conn, _ := serve(t, HandlerFunc(func(ctx context.Context, _ Request, stdout, _ io.Writer) Status {
		chunk := make([]byte, 4096)
		for ctx.Err() == nil {
			if _, err := stdout.Write(chunk); err != nil {
				return Status{Kind: Signaled, Code: 13}
			}
		}
		return Status{Kind: Signaled, Code: 9}
	}))
	c := Client{MaxOutput: 100 << 10}
	res, err := c.Run(context.Background(), conn, Request{Args: []string{"yes"}})
	if !errors.Is(err, ErrOutputLimit) {
		t.Fatalf("got %v", err)
	}
	if len(res.Stdout) > c.MaxOutput {
		t.Errorf("kept %d bytes, limit %d", len(res.Stdout), c.MaxOutput)
	}
}

// A server speaking garbage is an error for the client, never a hang or a
// result.
func TestClientRejectsBadAnswers(t *testing.T) {
	for name, answer := range map[string][]byte{
		"closed at once":   nil,
		"request frame":    {0, 0, 0, 0, FrameRequest, 0, 0, 0},
		"truncated frame":  {5, 0, 0, 0, FrameStdout, 0, 0, 0, 'a'},
		"oversized frame":  {0, 0, 2, 0, FrameStdout, 0, 0, 0},
		"bad exit payload": {1, 0, 0, 0, FrameExit, 0, 0, 0, 0},
		"output, no exit":  {2, 0, 0, 0, FrameStdout, 0, 0, 0, 'h', 'i'},
	} {
		t.Run(name, func(t *testing.T) {
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
			var c Client
			if res, err := c.Run(ctx, a, Request{Args: []string{"x"}}); err == nil {
				t.Errorf("accepted: %+v", res)
			} else if ctx.Err() != nil {
				t.Errorf("hung until the deadline: %v", err)
			}
		})
	}
}

// A malformed request gets a NotRun answer that says why.
func TestServerAnswersBadRequests(t *testing.T) {
	good, _ := Request{Args: []string{"x"}}.Encode()
	bad := append([]byte(nil), good...)
	bad[4] = 9 // version
	for name, tc := range map[string]struct {
		typ  uint8
		p    []byte
		want string
	}{
		"version":     {FrameRequest, bad, "version 9"},
		"not request": {FrameStdout, []byte("hi"), "first frame"},
	} {
		t.Run(name, func(t *testing.T) {
			conn, done := serve(t, ExecHandler{})
			if err := writeFrame(conn, tc.typ, tc.p); err != nil {
				t.Fatal(err)
			}
			hdr, buf := make([]byte, HeaderSize), make([]byte, MaxPayload)
			h, p, err := readFrame(conn, hdr, buf)
			if err != nil || h.Type != FrameExit {
				t.Fatalf("answer %+v %v", h, err)
			}
			st, err := DecodeStatus(p)
			if err != nil || st.Kind != NotRun || !strings.Contains(st.Message, tc.want) {
				t.Errorf("status %+v %v, want NotRun saying %q", st, err, tc.want)
			}
			if err := <-done; !errors.Is(err, ErrProtocol) {
				t.Errorf("server returned %v", err)
			}
		})
	}
}

func TestServeAnswersConcurrentRequestsAndStops(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, ln, HandlerFunc(func(_ context.Context, r Request, stdout, _ io.Writer) Status {
			io.WriteString(stdout, strings.Join(r.Args, " "))
			return Status{Kind: Exited}
		}))
	}()
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		go func() {
			conn, err := net.Dial("unix", ln.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			var c Client
			res, err := c.Run(context.Background(), conn, Request{Args: []string{"n", "x"}})
			if err == nil && string(res.Stdout) != "n x" {
				err = errors.New("wrong output " + string(res.Stdout))
			}
			errs <- err
		}()
	}
	for i := 0; i < 16; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop")
	}
}

// fakeHybrid serves Firecracker's hybrid handshake on a Unix socket: it reads
// "CONNECT <port>\n", answers answer, then hands the stream to the agent.
func fakeHybrid(t *testing.T, answer string, h Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var line []byte
			var one [1]byte
			for {
				if _, err := c.Read(one[:]); err != nil || one[0] == '\n' {
					break
				}
				line = append(line, one[0])
			}
			if string(line) != "CONNECT 10240" {
				c.Close()
				continue
			}
			if answer == "" { // Firecracker closes when nothing listens
				c.Close()
				continue
			}
			io.WriteString(c, answer)
			go ServeConn(context.Background(), c, h)
		}
	}()
	return path
}

func TestDialHybrid(t *testing.T) {
	echo := HandlerFunc(func(_ context.Context, r Request, stdout, _ io.Writer) Status {
		io.WriteString(stdout, r.Args[0])
		return Status{Kind: Exited}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := DialHybrid(ctx, fakeHybrid(t, "OK 1073741824\n", echo), Port)
	if err != nil {
		t.Fatal(err)
	}
	var c Client
	res, err := c.Run(ctx, conn, Request{Args: []string{"through"}})
	conn.Close()
	if err != nil || string(res.Stdout) != "through" {
		t.Fatalf("%+v %v", res, err)
	}
	for name, answer := range map[string]string{
		"not OK":   "NO 1\n",
		"bad port": "OK x\n",
		"too long": "OK " + strings.Repeat("1", 40) + "\n",
		"nothing":  "",
	} {
		_, err := DialHybrid(ctx, fakeHybrid(t, answer, echo), Port)
		if err == nil {
			t.Errorf("%s: dialled", name)
		}
	}
	if _, err := DialHybrid(ctx, filepath.Join(t.TempDir(), "absent"), Port); err == nil {
		t.Error("dialled an absent socket")
	}
}

// The guest side of vsock reaches ServeConn as an *os.File of a
// non-blocking socket (Go's net package cannot wrap AF_VSOCK): the same
// exchange over a non-blocking Unix socket pair's *os.File.
func TestServeConnOverAnOSFile(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	guest := os.NewFile(uintptr(fds[0]), "guest")
	hf := os.NewFile(uintptr(fds[1]), "host")
	host, err := net.FileConn(hf)
	hf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	done := make(chan error, 1)
	go func() {
		done <- ServeConn(context.Background(), guest, HandlerFunc(func(_ context.Context, r Request, stdout, _ io.Writer) Status {
			io.WriteString(stdout, strings.Join(r.Args, "+"))
			return Status{Kind: Exited, Code: 3}
		}))
	}()
	var c Client
	res, err := c.Run(context.Background(), host, Request{Args: []string{"a", "b"}})
	if err != nil || string(res.Stdout) != "a+b" || res.Code != 3 {
		t.Fatalf("%+v %q %v", res.Status, res.Stdout, err)
	}
	if err := <-done; err != nil {
		t.Errorf("server: %v", err)
	}
}

// A CONNECT the guest never answers ends at the caller's deadline and says
// so (context.DeadlineExceeded), every time: the connection's deadline
// timer can fire before the context's, and such a read was once reported
// as "nothing listening" with the context not yet done. A VMM that closes
// the connection (nothing listens on the port) is not a deadline.
func TestDialHybridTellsADeadlineFromNothingListening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var held []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := DialHybrid(ctx, path, Port)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "in time") || strings.Contains(err.Error(), "nothing listening") {
			t.Fatalf("try %d: %v, want a deadline error", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = DialHybrid(ctx, fakeHybrid(t, "", nil), Port)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "nothing listening") {
		t.Errorf("closed by the VMM: %v, want nothing listening, not a deadline", err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"connection deadline, context not yet done", os.ErrDeadlineExceeded, context.DeadlineExceeded},
		{"wrapped connection deadline", fmt.Errorf("read: %w", os.ErrDeadlineExceeded), context.DeadlineExceeded},
		{"reset", io.ErrUnexpectedEOF, nil},
	} {
		if got := ended(context.Background(), tc.err); got != tc.want {
			t.Errorf("%s: ended = %v, want %v", tc.name, got, tc.want)
		}
	}
}
