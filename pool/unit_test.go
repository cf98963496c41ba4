package pool

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pc "github.com/voltvmm/volt/pool/client"
)

// openIdle opens a pool that never starts a VMM (no templates; the VMM
// binary does not exist).
func openIdle(t *testing.T) *Pool {
	t.Helper()
	p, err := Open(context.Background(), Config{StateDir: t.TempDir(), VMMBin: "/nonexistent/volt-vmm"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background(), 0) })
	return p
}

func TestParseTTL(t *testing.T) {
	p := &Pool{cfg: Config{DefaultTTL: time.Minute, MaxTTL: time.Hour}}
	for in, want := range map[string]time.Duration{"": time.Minute, "1s": time.Second, "90m": 0, "1h": time.Hour, "500ms": 0, "x": 0, "-1s": 0, "1e9h": 0} {
		got, err := p.parseTTL(in)
		if want == 0 {
			if err == nil || !errors.Is(err, ErrBadRequest) {
				t.Errorf("%q: %v %v, want a bad request", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
}

func TestOneDaemonPerStateDir(t *testing.T) {
	dir := t.TempDir()
	p, err := Open(context.Background(), Config{StateDir: dir, VMMBin: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background(), 0)
	if _, err := Open(context.Background(), Config{StateDir: dir, VMMBin: "/nonexistent"}); err == nil || !strings.Contains(err.Error(), "another voltpool") {
		t.Errorf("second Open: %v", err)
	}
}

// Damaged files in the state directory are skipped or removed, never a
// panic and never a half-loaded template.
func TestDamagedStateIsSkipped(t *testing.T) {
	dir := t.TempDir()
	tdir := filepath.Join(dir, "templates")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{"garbage": "{not json", "empty": "", "wrongname": `{"name":"other"}`, "nosnap": `{"name":"nosnap"}`} {
		must(os.MkdirAll(filepath.Join(tdir, name), 0o755))
		must(os.WriteFile(filepath.Join(tdir, name, templateFile), []byte(content), 0o644))
	}
	must(os.MkdirAll(filepath.Join(tdir, "fifo"), 0o755))
	must(unix.Mkfifo(filepath.Join(tdir, "fifo", templateFile), 0o644))
	must(os.MkdirAll(filepath.Join(tdir, ".create-x-123", "snapshot"), 0o755))
	for name, content := range map[string]string{"aaaa": "garbage", "bbbb": `{"id":"bbbb","pid":-3}`, "cccc": `{"id":"cccc","pid":999999999,"start_time":1,"state":"leased"}`} {
		must(os.MkdirAll(filepath.Join(dir, "vms", name), 0o755))
		must(os.WriteFile(filepath.Join(dir, "vms", name, vmRecordFile), []byte(content), 0o644))
	}
	must(os.WriteFile(filepath.Join(dir, "vms", "cccc", leaseFile), []byte(`{"id":"cccc"}`), 0o644))
	done := make(chan *Pool, 1)
	go func() {
		p, err := Open(context.Background(), Config{StateDir: dir, VMMBin: "/nonexistent"})
		if err != nil {
			t.Error(err)
		}
		done <- p
	}()
	var p *Pool
	select {
	case p = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Open blocked on the damaged state (a FIFO?)")
	}
	if p == nil {
		return
	}
	defer p.Shutdown(context.Background(), 0)
	if ts := p.Templates(); len(ts) != 0 {
		t.Errorf("loaded %+v", ts)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "vms")); len(ents) != 0 {
		t.Errorf("VM directories left: %d", len(ents))
	}
	if _, err := os.Stat(filepath.Join(tdir, ".create-x-123")); !os.IsNotExist(err) {
		t.Errorf("staging directory of a killed create: %v", err)
	}
	// A lease whose VMM is gone answers 410, not 404.
	if err := p.Release("cccc", 0); !errors.Is(err, ErrGone) {
		t.Errorf("release of a lease that died with its daemon: %v", err)
	}
}

func TestWriteJSONReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r.json")
	for i := 0; i < 3; i++ {
		if err := writeJSON(path, map[string]int{"n": i}, i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	var got map[string]int
	if err := readJSON(path, &got); err != nil || got["n"] != 2 {
		t.Errorf("%v %v", got, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %d entries", len(ents))
	}
	os.Symlink(path, filepath.Join(dir, "link"))
	if err := readJSON(filepath.Join(dir, "link"), &got); err == nil {
		t.Error("followed a symlink")
	}
}

func TestCopySparseKeepsHolesAndBytes(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt(bytes.Repeat([]byte{7}, 8192), 32<<20)
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs")
	}
	var st unix.Stat_t
	unix.Stat(dst, &st)
	if st.Blocks*512 > 1<<20 {
		t.Errorf("copy uses %d bytes on disk: holes were filled", st.Blocks*512)
	}
	if err := copySparse(src, dst); err == nil {
		t.Error("overwrote an existing file")
	}
	fifo := filepath.Join(dir, "fifo")
	unix.Mkfifo(fifo, 0o644)
	if err := copySparse(fifo, filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("copied a FIFO: %v", err)
	}
}

func TestProcStartTimeIdentifiesAProcess(t *testing.T) {
	st, err := procStartTime(os.Getpid())
	if err != nil || st == 0 {
		t.Fatalf("%d %v", st, err)
	}
	if _, err := adoptProcess(os.Getpid(), st+1); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("adopted a process with another start time: %v", err)
	}
	if _, err := adoptProcess(1<<22+7, st); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("adopted an absent pid: %v", err)
	}
}

func TestValidateSpec(t *testing.T) {
	for name, tc := range map[string]struct {
		spec pc.TemplateSpec
		want string
	}{
		"ok":                {pc.TemplateSpec{Name: "a.b_c-1", Kernel: "/bin/true"}, ""},
		"long name":         {pc.TemplateSpec{Name: strings.Repeat("a", 65), Kernel: "/bin/true"}, "template name"},
		"dot name":          {pc.TemplateSpec{Name: ".hidden", Kernel: "/bin/true"}, "template name"},
		"kernel is a dir":   {pc.TemplateSpec{Name: "a", Kernel: "/"}, "not a regular file"},
		"bad tap":           {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", Network: &pc.Network{HostDevName: "a/b"}}, "TAP name"},
		"long tap":          {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", Network: &pc.Network{HostDevName: "0123456789abcdef"}}, "TAP name"},
		"cpus":              {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", CPUs: 33}, "out of range"},
		"snapshot and boot": {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", FromSnapshot: "/x"}, "do not apply"},
		"relative snapshot": {pc.TemplateSpec{Name: "a", FromSnapshot: "x"}, "absolute"},
		"ready timeout":     {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", ReadyTimeout: "2h"}, "ready_timeout"},
		"too warm":          {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", Warm: MaxWarm + 1}, "warm"},
		"prime, no vsock":   {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", Prime: true}, "needs vsock"},
		"prime":             {pc.TemplateSpec{Name: "a", Kernel: "/bin/true", Prime: true, Vsock: true}, ""},
	} {
		err := validateSpec(&tc.spec)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a bad request saying %q", name, err, tc.want)
		}
	}
}

// FuzzAPIBodies sends arbitrary bodies to the lease endpoints of a pool with
// no templates: every answer is a 4xx with a JSON error, never a 5xx or a
// panic.
func FuzzAPIBodies(f *testing.F) {
	for _, s := range []string{`{"template":"x"}`, `{"template":"x","ttl":"1s"}`, `{"ttl":"9999999h"}`, `{`, `[]`, `null`, `{"template":1}`, "\x00"} {
		f.Add(s)
	}
	p, err := Open(context.Background(), Config{StateDir: f.TempDir(), VMMBin: "/nonexistent"})
	if err != nil {
		f.Fatal(err)
	}
	defer p.Shutdown(context.Background(), 0)
	h := p.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		for _, path := range []string{"/v1/leases", "/v1/leases/abc/renew", "/v1/templates/x/warm"} {
			method := http.MethodPost
			if strings.HasSuffix(path, "/warm") {
				method = http.MethodPut
			}
			req := httptest.NewRequest(method, path, strings.NewReader(body))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code < 400 || w.Code > 499 || !strings.Contains(w.Body.String(), `"error"`) {
				t.Fatalf("%s %s %q: %d %s", method, path, body, w.Code, w.Body.String())
			}
		}
	})
}

func TestListenUnixModeGroupAndStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "p.sock")
	l, err := listenUnix(path, "daemon")
	if err != nil {
		t.Skipf("no group daemon here: %v", err)
	}
	var st unix.Stat_t
	unix.Stat(path, &st)
	if st.Mode&0o777 != 0o660 || st.Gid != 1 {
		t.Errorf("socket mode %o gid %d, want 0660 and daemon's gid 1", st.Mode&0o777, st.Gid)
	}
	if _, err := listenUnix(path, ""); err == nil || !strings.Contains(err.Error(), "served by another process") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	l.Close() // leaves the file: a stale socket
	l2, err := listenUnix(path, "")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o644)
	if _, err := listenUnix(regular, ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listened over a regular file: %v", err)
	}
	if _, err := listenUnix(filepath.Join(dir, "q.sock"), "no-such-group-here"); err == nil {
		t.Error("unknown group accepted")
	}
}

func TestVsockConnectTimeoutReachesEveryVMM(t *testing.T) {
	for _, tc := range []struct {
		d       time.Duration
		wantErr bool
		want    []string
	}{
		{0, false, []string{"--console", "none"}}, // volt-vmm's default: no flag
		{90 * time.Second, false, []string{"--console", "none", "--vsock-connect-timeout", "1m30s"}},
		{MaxVsockConnectTimeout, false, []string{"--console", "none", "--vsock-connect-timeout", "1h0m0s"}},
		{-time.Second, true, nil},
		{MaxVsockConnectTimeout + time.Second, true, nil},
	} {
		c := Config{StateDir: t.TempDir(), VMMBin: "/bin/true", VsockConnectTimeout: tc.d}
		err := c.setDefaults()
		if tc.wantErr {
			if err == nil {
				t.Errorf("%v accepted", tc.d)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.d, err)
		}
		if got := c.vmmArgs(c.VMMArgs); !slices.Equal(got, tc.want) {
			t.Errorf("%v: clone args %q, want %q", tc.d, got, tc.want)
		}
		// The template boot's own flags keep theirs, the timeout after them;
		// the shared defaults are never written through.
		tpl := c.vmmArgs([]string{"--console", "file:x"})
		if tc.d > 0 && (tpl[len(tpl)-2] != "--vsock-connect-timeout" || len(c.VMMArgs) != 2) {
			t.Errorf("%v: template args %q, defaults %q", tc.d, tpl, c.VMMArgs)
		}
	}
}
