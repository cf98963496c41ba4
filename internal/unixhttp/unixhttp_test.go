package unixhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestDo(t *testing.T) {
	sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/echo":
			if r.Header.Get("Content-Type") != "application/json" {
				http.Error(w, "no JSON content type", http.StatusBadRequest)
				return
			}
			w.Write(b)
		case "/big":
			w.Write([]byte(strings.Repeat("x", 65)))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			http.Error(w, "nothing here", http.StatusNotFound)
		}
	})
	c := New(sock, 2, 64)
	defer c.Close()
	for _, tc := range []struct {
		name, path string
		body       any
		status     int
		answer     string
		err        string
	}{
		{name: "a JSON body round trip", path: "/echo", body: map[string]int{"a": 1}, status: 200, answer: `{"a":1}`},
		{name: "no body", path: "/empty", status: 204},
		{name: "an error status is an answer", path: "/nope", status: 404, answer: "nothing here\n"},
		{name: "an answer over the limit", path: "/big", err: "answer larger than 64 bytes"},
		{name: "a body that cannot be encoded", path: "/echo", body: func() {}, err: "encode body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ans, err := c.Do(context.Background(), http.MethodPut, tc.path, tc.body)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || ans.Status != tc.status || string(ans.Body) != tc.answer {
				t.Fatalf("got %d %q %v, want %d %q", ans.Status, ans.Body, err, tc.status, tc.answer)
			}
			if ans.OK() != (tc.status < 300) {
				t.Errorf("OK() %v for %d", ans.OK(), tc.status)
			}
		})
	}
}

func TestDoNamesTheSocketItCannotReach(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	_, err := New(sock, 1, 64).Do(context.Background(), http.MethodGet, "/", nil)
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("err %v, want it to name %s", err, sock)
	}
}
