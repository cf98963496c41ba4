package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/agent"
)

// fakeDaemon answers the pool API's shapes on a Unix socket so that the
// client's encoding, decoding and error handling can be checked alone (the
// real daemon is tested in package pool).
func fakeDaemon(t *testing.T, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "p.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestErrorsCarryStatusAndMessage(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/leases/gone":
			w.WriteHeader(http.StatusGone)
			io.WriteString(w, `{"error":"lease gone already ended: expired"}`)
		case "/v1/leases/plain":
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "upstream trouble\n")
		default:
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, `{"id": 5}`) // a number where a string is due
		}
	}))
	c := New(sock)
	defer c.Close()
	ctx := context.Background()
	err := c.Release(ctx, "gone")
	if StatusOf(err) != http.StatusGone || !strings.Contains(err.Error(), "expired") {
		t.Errorf("410: %v", err)
	}
	err = c.Release(ctx, "plain")
	if StatusOf(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "upstream trouble") {
		t.Errorf("non-JSON error: %v", err)
	}
	if _, err := c.Lease(ctx, "bad"); err == nil || StatusOf(err) != 0 || !strings.Contains(err.Error(), "decode") {
		t.Errorf("undecodable answer: %v", err)
	}
	if StatusOf(errors.New("x")) != 0 {
		t.Error("StatusOf of a plain error")
	}
	if _, err := New(filepath.Join(t.TempDir(), "absent.sock")).Status(ctx); err == nil || !strings.Contains(err.Error(), "absent.sock") {
		t.Errorf("absent socket: %v", err)
	}
}

// Run releases the lease even when the command cannot be run, and reports
// both failures.
func TestRunReleasesWhatItAcquired(t *testing.T) {
	var mu sync.Mutex
	var released []string
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/leases":
			var req AcquireRequest
			json.NewDecoder(r.Body).Decode(&req)
			if req.Template != "fn" || req.TTL != "30s" {
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, `{"error":"unexpected request"}`)
				return
			}
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(Lease{ID: "l1", Template: "fn", VsockUDS: "/nonexistent/vsock.sock", ExpiresAt: time.Now().Add(time.Minute)})
		case r.Method == http.MethodDelete && r.URL.Path == "/v1/leases/l1":
			mu.Lock()
			released = append(released, "l1")
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	c := New(sock)
	defer c.Close()
	_, lease, _, err := c.Run(context.Background(), "fn", 30*time.Second, agent.Request{Args: []string{"true"}}, nil)
	if err == nil || lease.ID != "l1" || !strings.Contains(err.Error(), "vsock") {
		t.Errorf("run against an unreachable agent: %+v %v", lease, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(released) != 1 {
		t.Errorf("released %v, want the one lease", released)
	}
	if _, err := RunOn(context.Background(), Lease{ID: "x", Template: "t"}, agent.Request{Args: []string{"true"}}, nil); err == nil || !strings.Contains(err.Error(), "no vsock") {
		t.Errorf("RunOn without vsock: %v", err)
	}
}
