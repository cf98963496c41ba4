package microhttp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// threads records what ConfineThread was called on (thread IDs) and what
// the handler ran on, and checks every read against them.
type threads struct {
	mu         sync.Mutex
	confined   map[int]bool // thread ID → ConfineThread ran on it
	calls      int
	fail       func(call int) error // the error of the n-th call (from 1), if any
	handled    int                  // requests the handler saw
	onConfined int                  // of those, how many ran on a thread confined by then

	after      atomic.Bool // set once Confine returned: every read must be on a confined thread
	badReads   atomic.Int32
	readsAfter atomic.Int32
}

func (th *threads) confine() error {
	th.mu.Lock()
	defer th.mu.Unlock()
	th.calls++
	if th.fail != nil {
		if err := th.fail(th.calls); err != nil {
			return err
		}
	}
	th.confined[syscall.Gettid()] = true
	return nil
}

func (th *threads) isConfined(tid int) bool {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.confined[tid]
}

func (th *threads) handler() Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) Response {
		th.mu.Lock()
		th.handled++
		if th.confined[syscall.Gettid()] {
			th.onConfined++
		}
		th.mu.Unlock()
		return echo(ctx, req)
	})
}

// checkedListener hands out connections whose reads check, once Confine has
// returned, that the reading goroutine's thread was confined first.
type checkedListener struct {
	*net.UnixListener
	th *threads
}

func (l checkedListener) Accept() (net.Conn, error) {
	c, err := l.UnixListener.Accept()
	if err != nil {
		return nil, err
	}
	return checkedConn{c, l.th}, nil
}

type checkedConn struct {
	net.Conn
	th *threads
}

func (c checkedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.th.after.Load() {
		c.th.readsAfter.Add(1)
		if !c.th.isConfined(syscall.Gettid()) {
			c.th.badReads.Add(1)
		}
	}
	return n, err
}

func startConfinable(t *testing.T, th *threads) (*Server, string, chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	var confineErrs atomic.Int32
	s := New(Config{Handler: th.handler(), Fault: fault, ConfineThread: th.confine,
		OnConfineError: func(error) { confineErrs.Add(1) }})
	done := make(chan error, 1)
	go func() { done <- s.Serve(checkedListener{ln, th}) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return s, sock, done
}

// TestConfineThreadRunsBeforeEveryReadAfterConfine: after Confine, the
// accept loop's thread and each connection's are confined before the
// connection reads (a keep-alive connection opened before Confine, idle
// at the time, included), and the handler never runs on a confined thread.
func TestConfineThreadRunsBeforeEveryReadAfterConfine(t *testing.T) {
	th := &threads{confined: map[int]bool{}}
	s, sock, _ := startConfinable(t, th)
	old, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldr := bufio.NewReader(old)
	if got := exchange(t, sock, "GET /before HTTP/1.1\r\nConnection: close\r\n\r\n", false, 5*time.Second); !strings.Contains(got, `"GET /before "`) {
		t.Fatalf("before Confine: %q", got)
	}
	if th.calls != 0 {
		t.Fatalf("ConfineThread called %d times before Confine", th.calls)
	}
	// The old connection has served a request and is idle in its wait.
	old.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(old, "GET /old1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
	readAnswer(t, oldr, `"GET /old1 "`)

	if err := s.Confine(); err != nil {
		t.Fatalf("Confine: %v", err)
	}
	th.after.Store(true)
	th.mu.Lock()
	calls := th.calls
	th.mu.Unlock()
	if calls < 1 {
		t.Fatalf("Confine returned before the accept loop confined its thread (%d calls)", calls)
	}
	for i := range 3 {
		got := exchange(t, sock, "GET /after HTTP/1.1\r\nConnection: close\r\n\r\n", false, 5*time.Second)
		if !strings.Contains(got, `"GET /after "`) {
			t.Fatalf("after Confine, connection %d: %q", i, got)
		}
	}
	io.WriteString(old, "GET /old2 HTTP/1.1\r\n\r\n")
	readAnswer(t, oldr, `"GET /old2 "`)

	if n := th.readsAfter.Load(); n < 4 {
		t.Fatalf("%d reads checked after Confine, want at least 4", n)
	}
	if n := th.badReads.Load(); n != 0 {
		t.Errorf("%d reads after Confine on a thread ConfineThread had not run on", n)
	}
	th.mu.Lock()
	defer th.mu.Unlock()
	// The accept loop, three new connections and the old one.
	if th.calls != 5 {
		t.Errorf("ConfineThread called %d times, want 5 (the accept loop, 3 new connections, the old one)", th.calls)
	}
	if th.handled != 6 || th.onConfined != 0 {
		t.Errorf("of %d requests (want 6), %d were handled on a confined thread", th.handled, th.onConfined)
	}
}

func readAnswer(t *testing.T, br *bufio.Reader, want string) {
	t.Helper()
	var got strings.Builder
	n := -1
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("answer %q: %v", got.String(), err)
		}
		got.WriteString(l)
		if v, ok := strings.CutPrefix(l, "Content-Length: "); ok {
			n = 0
			for _, ch := range strings.TrimSpace(v) {
				n = n*10 + int(ch-'0')
			}
		}
		if l == "\r\n" {
			break
		}
	}
	body := make([]byte, max(n, 0))
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	got.Write(body)
	if !strings.Contains(got.String(), want) {
		t.Fatalf("answer %q lacks %q", got.String(), want)
	}
}

// TestConfineThreadFailureClosesTheConnection: a connection whose thread
// cannot be confined is closed unanswered and reported; the server goes
// on, and a later connection whose thread is confined is served.
func TestConfineThreadFailureClosesTheConnection(t *testing.T) {
	th := &threads{confined: map[int]bool{}, fail: func(call int) error {
		if call == 2 {
			return errors.New("no filter today")
		}
		return nil
	}}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	reported := make(chan error, 4)
	s := New(Config{Handler: th.handler(), Fault: fault, ConfineThread: th.confine,
		OnConfineError: func(err error) { reported <- err }})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	defer func() {
		s.Shutdown(context.Background())
		<-done
	}()
	if err := s.Confine(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n") // may find it closed already
	if got, err := io.ReadAll(c); len(got) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a connection whose thread was not confined: answer %q, %v; want it closed unanswered", got, err)
	}
	c.Close()
	select {
	case err := <-reported:
		if err.Error() != "no filter today" {
			t.Errorf("OnConfineError got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnConfineError was not called")
	}
	th.mu.Lock()
	n := th.handled
	th.mu.Unlock()
	if n != 0 {
		t.Errorf("the handler ran %d times for the unconfined connection", n)
	}
	if got := exchange(t, sock, "GET /y HTTP/1.1\r\nConnection: close\r\n\r\n", false, 5*time.Second); !strings.Contains(got, `"GET /y "`) {
		t.Errorf("the next connection: %q", got)
	}
}

// TestConfineFailureOfTheAcceptLoopEndsServe: Confine returns the accept
// loop's error, and Serve ends with it instead of accepting unconfined.
func TestConfineFailureOfTheAcceptLoopEndsServe(t *testing.T) {
	th := &threads{confined: map[int]bool{}, fail: func(int) error { return errors.New("refused") }}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Handler: th.handler(), Fault: fault, ConfineThread: th.confine})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	// Serve may not have started yet: Confine waits for it either way.
	if err := s.Confine(); err == nil || err.Error() != "refused" {
		t.Fatalf("Confine: %v, want the accept loop's error", err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "confine the accept loop's thread: refused") {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve went on after its thread could not be confined")
	}
	ln.Close()
}

// TestConfineThreadNeedsADeadline: a listener Confine could not wake is
// refused at once.
func TestConfineThreadNeedsADeadline(t *testing.T) {
	s := New(Config{Handler: echo, ConfineThread: func() error { return nil }})
	if err := s.Serve(noDeadline{}); err == nil || !strings.Contains(err.Error(), "SetDeadline") {
		t.Errorf("Serve on a listener without SetDeadline: %v", err)
	}
}

type noDeadline struct{ net.Listener }
