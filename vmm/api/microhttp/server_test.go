package microhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// echo answers with the method, path and body it saw, as JSON.
var echo = HandlerFunc(func(_ context.Context, req *Request) Response {
	if req.Path == "/empty" {
		return Response{Status: 204}
	}
	return Response{Status: 200, Body: fmt.Appendf(nil, `{"seen":%q}`, req.Method+" "+req.Path+" "+string(req.Body))}
})

func fault(msg string) []byte { return fmt.Appendf(nil, `{"fault_message":%q}`, msg) }

func startServer(t *testing.T, cfg Config) string {
	t.Helper()
	if cfg.Handler == nil {
		cfg.Handler = echo
	}
	cfg.Fault = fault
	cfg.ServerName = "test"
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := New(cfg)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return sock
}

// exchange writes raw to a new connection, closes its sending side and
// reads everything the server answers until it closes the connection or
// the deadline passes.
func exchange(t *testing.T, sock, raw string, half bool, wait time.Duration) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	if half {
		c.(*net.UnixConn).CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(wait))
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestServerAnswersEveryRequestWithJSON(t *testing.T) {
	sock := startServer(t, Config{Limits: Limits{MaxHeaderBytes: 512, MaxBodyBytes: 64}})
	tests := []struct {
		name, raw string
		want      []string // substrings of the answer, in order
	}{
		{"no Host header, as Firecracker accepts", "GET /version HTTP/1.1\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 200 OK\r\n", "Content-Type: application/json\r\n", `{"seen":"GET /version "}`}},
		{"body", "PUT /x HTTP/1.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
			[]string{"200 OK", `"PUT /x abcd"`}},
		{"204 has no body", "PUT /empty HTTP/1.1\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 204 No Content\r\nServer: test\r\nConnection: close\r\n\r\n"}},
		{"bare LF line ends", "GET /lf HTTP/1.1\nConnection: close\n\n", []string{`"GET /lf "`}},
		{"percent-decoded path, query dropped", "GET /drives/root%66s?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n", []string{`"GET /drives/rootfs "`}},
		{"bad request line", "GARBAGE\r\n\r\n", []string{"400 Bad Request", "Connection: close", `{"fault_message":"malformed request line \"GARBAGE\"`}},
		{"lower-case method", "get / HTTP/1.1\r\n\r\n", []string{"400", `"fault_message":"malformed request line: method \"get\"`}},
		{"HTTP/2", "GET / HTTP/2.0\r\n\r\n", []string{"505", `HTTP version \"HTTP/2.0\" is not supported`}},
		{"not a path", "GET http://x/ HTTP/1.1\r\n\r\n", []string{"400", "is not an absolute path"}},
		{"headers too large", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 600) + "\r\n\r\n", []string{"431", `"fault_message":"the request line and headers exceed the limit"`}},
		{"negative Content-Length", "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", []string{"400", `Content-Length \"-1\" is not a non-negative integer`}},
		{"signed Content-Length", "PUT / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", []string{"400", "not a non-negative integer"}},
		{"conflicting Content-Length", "PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", []string{"400", "conflicting Content-Length headers (1 and 2)"}},
		{"repeated equal Content-Length", "PUT /x HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\nConnection: close\r\n\r\nab", []string{"200", `"PUT /x ab"`}},
		{"huge Content-Length", "PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", []string{"400", "out of range"}},
		{"body over the limit", "PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", []string{"413 Payload Too Large", "request body of 65 bytes exceeds the limit of 64"}},
		{"chunked", "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []string{"501", "Transfer-Encoding \\\"chunked\\\" is not supported"}},
		{"header without colon", "GET / HTTP/1.1\r\nnocolon\r\n\r\n", []string{"400", `malformed header line \"nocolon\"`}},
		{"folded header", "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", []string{"400", "folding"}},
		{"body cut short", "PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", []string{"400", "the connection closed before the whole request body arrived"}},
		{"an idle client that hangs up gets nothing", "", nil},
		{"HTTP/1.0 closes", "GET /old HTTP/1.0\r\n\r\n", []string{"HTTP/1.0 200 OK", "Connection: close", `"GET /old "`}},
		{"Expect: 100-continue", "PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
			[]string{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK", `"PUT /x hi"`}},
		{"two pipelined requests", "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n", []string{`"GET /a "`, `"GET /b "`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := exchange(t, sock, tt.raw, true, 2*time.Second)
			if tt.want == nil && got != "" {
				t.Fatalf("answer %q, want none", got)
			}
			rest := got
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("answer %q lacks %q (in order)", got, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestStalledClientsTimeOut(t *testing.T) {
	sock := startServer(t, Config{HeaderTimeout: 100 * time.Millisecond, BodyTimeout: 100 * time.Millisecond})
	for _, raw := range []string{
		"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", // body stalls
		"GET / HTTP/1.1\r\nHost: x\r\n",                   // head stalls
	} {
		start := time.Now()
		got := exchange(t, sock, raw, false, 3*time.Second)
		if !strings.Contains(got, "408 Request Timeout") || !strings.Contains(got, `"fault_message":"the request was not received in time"`) {
			t.Errorf("%q: answer %q, want a JSON 408", raw, got)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%q: answered after %v", raw, d)
		}
	}
}

// TestConnectionsOverTheLimitGet503 holds MaxConns connections open; the
// next is answered 503 and closed, and once one of them closes a new one
// is served again.
func TestConnectionsOverTheLimitGet503(t *testing.T) {
	var refused []int
	var mu sync.Mutex
	sock := startServer(t, Config{MaxConns: 2, OnProtocolError: func(status int, _ string) {
		mu.Lock()
		refused = append(refused, status)
		mu.Unlock()
	}})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A request answered proves the server counts the connection.
		if _, err := io.WriteString(c, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, "200") {
			t.Fatalf("held connection: %q, %v", line, err)
		}
		held = append(held, c)
	}
	// The server answers an over-limit connection without reading it, and
	// may close it before a request would be written: only read.
	overLimit := func() string {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	got := overLimit()
	if !strings.Contains(got, "503 Service Unavailable") || !strings.Contains(got, "too many API connections at once (at most 2)") {
		t.Fatalf("third connection: %q, want a JSON 503", got)
	}
	mu.Lock()
	if len(refused) != 1 || refused[0] != 503 {
		t.Errorf("OnProtocolError saw %v, want one 503", refused)
	}
	mu.Unlock()
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") // refused: EPIPE
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if got = string(b); strings.Contains(got, "200 OK") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a held connection closed: %q, want 200", got)
		}
		time.Sleep(10 * time.Millisecond) // the server notices the close
	}
}

// TestNetHTTPClientWorks keeps the server usable by Go's own client, which
// the typed API client uses: keep-alive reuse and 204 framing.
func TestNetHTTPClientWorks(t *testing.T) {
	sock := startServer(t, Config{})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for i := range 3 {
		path := "/empty"
		if i == 1 {
			path = "/full"
		}
		resp, err := c.Post("http://localhost"+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/empty" && (resp.StatusCode != 204 || len(b) != 0) || path == "/full" && !strings.Contains(string(b), `POST /full {}`) {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, b)
		}
	}
}

func TestShutdownWaitsForTheRequestInFlight(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req *Request) Response {
		close(entered)
		<-release
		return Response{Status: 204}
	})
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Handler: h, Fault: fault})
	go s.Serve(ln)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PUT / HTTP/1.1\r\n\r\n")
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	line, _ := bufio.NewReader(c).ReadString('\n')
	if line != "HTTP/1.1 204 No Content\r\n" {
		t.Errorf("in-flight request answered %q", line)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// FuzzReadHead feeds arbitrary bytes to the request parser: it must return
// a request, io.EOF or a *ProtocolError with a client-error status, and
// never panic.
func FuzzReadHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\n\r\n",
		"PUT /drives/rootfs HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n{\"a\": \"b\"}",
		"PATCH /vm HTTP/1.0\nConnection: keep-alive\n\n",
		"\r\nGET /%zz HTTP/1.1\r\n\r\n",
		"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := readHead(bufio.NewReaderSize(strings.NewReader(string(data)), 64), Limits{MaxHeaderBytes: 1024, MaxBodyBytes: 100})
		var pe *ProtocolError
		switch {
		case err == nil:
			if req.Method == "" || !strings.HasPrefix(req.Path, "/") || req.contentLength > 100 {
				t.Fatalf("accepted a bad request: %+v", req)
			}
		case errors.Is(err, io.EOF):
		case errors.As(err, &pe):
			if pe.Status < 400 || pe.Status > 505 || pe.Msg == "" {
				t.Fatalf("protocol error %+v", pe)
			}
		default:
			t.Fatalf("unexpected error type %T: %v", err, err)
		}
	})
}
