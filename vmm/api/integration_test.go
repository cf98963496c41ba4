package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

// apiClient talks HTTP over the API socket, checking every request and
// response body against the swagger definition the endpoint uses.
type apiClient struct {
	t    *testing.T
	http *http.Client
}

func newAPIClient(t *testing.T, sock string) *apiClient {
	return &apiClient{t: t, http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}}
}

// call sends body (checked as reqDef) and checks the status and the
// response (as respDef for 200, Error for 400).
func (a *apiClient) call(method, path, reqDef, body string, status int, respDef string) []byte {
	a.t.Helper()
	if reqDef != "" {
		if err := checkSwagger(reqDef, []byte(body)); err != nil {
			a.t.Fatalf("test bug: %s %s request body is not a valid %s: %v", method, path, reqDef, err)
		}
	}
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	if resp.StatusCode != status {
		a.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, resp.StatusCode, status, got)
	}
	switch {
	case status == http.StatusNoContent && len(got) != 0:
		a.t.Fatalf("%s %s: 204 with body %q", method, path, got)
	case status == http.StatusBadRequest:
		respDef = "Error"
	}
	if respDef != "" {
		if err := checkSwagger(respDef, got); err != nil {
			a.t.Fatalf("%s %s: response %s: %v", method, path, got, err)
		}
	}
	return got
}

func (a *apiClient) state() string {
	a.t.Helper()
	var info types.InstanceInfo
	if err := json.Unmarshal(a.call("GET", "/", "", "", 200, "InstanceInfo"), &info); err != nil {
		a.t.Fatal(err)
	}
	return info.State
}

// console reads the guest's serial output line by line.
type console struct {
	t     *testing.T
	in    io.Writer
	lines chan string
	mu    sync.Mutex
	log   strings.Builder
}

func newConsole(t *testing.T, out io.Reader, in io.Writer) *console {
	c := &console{t: t, in: in, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.mu.Lock()
			c.log.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	return c
}

func (c *console) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.log.String()
}

func (c *console) expect(prefix string) string {
	c.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("console closed waiting for %q; output:\n%s", prefix, c.output())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			c.t.Fatalf("timed out waiting for %q; output:\n%s", prefix, c.output())
		}
	}
}

func (c *console) send(line string) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.in, "%s\n", line); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

// TestFirecrackerSequenceBootsProbe drives the real VMM through the API
// socket the way a Firecracker user does, and talks to the probe guest.
func TestFirecrackerSequenceBootsProbe(t *testing.T) {
	kvmtest.Require(t)
	ctx := context.Background()
	probeELF, err := probe.Path(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("build probe guest: %v", err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctrl := NewController(Options{
		ID:         "probe-1",
		VMMVersion: "test",
		LogOutput:  io.Discard,
		Base:       vmm.Config{Console: outW, ConsoleInput: inR},
	})
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	srv, err := Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(ctrl.Handler(), nil)
	t.Cleanup(func() {
		srv.Shutdown(ctx)
		ctrl.Close()
		inW.Close()
		outW.Close()
	})
	con := newConsole(t, outR, inW)
	api := newAPIClient(t, sock)

	if s := api.state(); s != "Not started" {
		t.Fatalf("state %q", s)
	}
	api.call("GET", "/version", "", "", 200, "FirecrackerVersion")
	metrics := filepath.Join(dir, "metrics.json")
	api.call("PUT", "/metrics", "Metrics", `{"metrics_path": "`+metrics+`"}`, 204, "")
	api.call("PUT", "/boot-source", "BootSource", `{"kernel_image_path": "`+probeELF+`", "boot_args": "console=ttyS0"}`, 204, "")
	api.call("PUT", "/machine-config", "MachineConfiguration", `{"vcpu_count": 2, "mem_size_mib": 64}`, 204, "")
	api.call("GET", "/machine-config", "", "", 200, "MachineConfiguration")
	api.call("GET", "/vm/config", "", "", 200, "FullVmConfiguration")
	api.call("PUT", "/actions", "InstanceActionInfo", `{"action_type": "SendCtrlAltDel"}`, 400, "")
	api.call("PUT", "/actions", "InstanceActionInfo", `{"action_type": "InstanceStart"}`, 204, "")

	banner := con.expect("volt-probe: booted")
	if cpus, mem, ok := probe.ParseBanner(banner); !ok || cpus != 2 || mem < 60 || mem > 64 {
		t.Fatalf("banner %q: want 2 vCPUs and about 64 MiB as configured through the API", banner)
	}
	con.expect(probe.ReadyLine)
	if s := api.state(); s != "Running" {
		t.Fatalf("state %q after InstanceStart", s)
	}
	con.send("echo hello over the api")
	con.expect("hello over the api")

	api.call("PATCH", "/vm", "Vm", `{"state": "Paused"}`, 204, "")
	if s := api.state(); s != "Paused" {
		t.Fatalf("state %q after pausing", s)
	}
	con.send("echo while paused")
	select {
	case l := <-con.lines:
		t.Fatalf("paused guest answered %q", l)
	case <-time.After(300 * time.Millisecond):
	}
	api.call("PUT", "/boot-source", "BootSource", `{"kernel_image_path": "`+probeELF+`"}`, 400, "")
	api.call("PATCH", "/vm", "Vm", `{"state": "Resumed"}`, 204, "")
	con.expect("while paused")
	if s := api.state(); s != "Running" {
		t.Fatalf("state %q after resuming", s)
	}

	// The probe has no keyboard driver: the keys are delivered and
	// ignored, and the guest goes on answering.
	api.call("PUT", "/actions", "InstanceActionInfo", `{"action_type": "SendCtrlAltDel"}`, 204, "")
	con.send("echo after ctrl-alt-del")
	con.expect("after ctrl-alt-del")

	api.call("PUT", "/actions", "InstanceActionInfo", `{"action_type": "FlushMetrics"}`, 204, "")
	b, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	var line struct {
		State string       `json:"state"`
		VMM   *vmm.Metrics `json:"vmm"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(b), &line); err != nil {
		t.Fatalf("metrics %q: %v", b, err)
	}
	if line.State != "Running" || line.VMM == nil || line.VMM.VCPUs != 2 || line.VMM.BootTimeline["ready"] <= 0 {
		t.Errorf("metrics line %s", b)
	}

	con.send("poweroff")
	con.expect(probe.PoweroffLine)
	select {
	case <-ctrl.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("VM did not stop after poweroff; output:\n%s", con.output())
	}
	if r, _ := ctrl.Result(); r.Reason != vmm.StopPowerOff {
		t.Fatalf("VM stopped with %s (%v), want poweroff", r.Reason, r.Err)
	}
	api.call("PATCH", "/vm", "Vm", `{"state": "Paused"}`, 400, "")
	api.state()
}

func TestListenRefusesToReplaceFiles(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(regular, 0); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("regular file changed")
	}

	sock := filepath.Join(dir, "api.sock")
	live, err := Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock, 0); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	live.Shutdown(context.Background())
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file left after shutdown: %v", err)
	}

	// A stale socket: bound, then the listener's fd dropped without
	// unlinking, as a killed process leaves it.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	srv, err := Listen(sock, 0)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv.Shutdown(context.Background())
}

// TestSocketRefusalsAreAPIFaults checks that requests the HTTP layer
// refuses before they reach the handler still get the API's JSON fault
// body, as Firecracker's clients expect of every error.
func TestSocketRefusalsAreAPIFaults(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv, err := Listen(sock, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ctrl := NewController(Options{LogOutput: io.Discard})
	defer ctrl.Close()
	srv.Start(ctrl.Handler(), nil)
	defer srv.Shutdown(context.Background())
	for _, tt := range []struct{ raw, status, fault string }{
		{"PUT /boot-source HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", "413", "request body of 1025 bytes exceeds the limit of 1024"},
		{"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: -1\r\n\r\n", "400", `Content-Length \"-1\" is not a non-negative integer`},
		{"BAD\r\n\r\n", "400", `malformed request line \"BAD\"`},
		{"GET /version HTTP/1.1\r\nConnection: close\r\n\r\n", "200", ""},
	} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, tt.raw)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: %v", tt.raw, err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if fmt.Sprint(resp.StatusCode) != tt.status || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%q: %d %q, want %s application/json", tt.raw, resp.StatusCode, resp.Header.Get("Content-Type"), tt.status)
		}
		if tt.fault != "" && !strings.Contains(string(body), `{"fault_message":"`+tt.fault) {
			t.Errorf("%q: body %s, want fault %q", tt.raw, body, tt.fault)
		}
		if err := checkSwagger(map[bool]string{true: "Error", false: "FirecrackerVersion"}[tt.fault != ""], body); err != nil {
			t.Errorf("%q: %v", tt.raw, err)
		}
	}
}

// probeVM is a controller serving the API over a socket, with the guest
// console wired to the test.
type probeVM struct {
	ctrl *Controller
	api  *apiClient
	con  *console
}

func startProbeVM(t *testing.T, dir, name string) *probeVM {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctrl := NewController(Options{ID: name, LogOutput: io.Discard, Base: vmm.Config{Console: outW, ConsoleInput: inR}})
	sock := filepath.Join(dir, name+".sock")
	srv, err := Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(ctrl.Handler(), nil)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		ctrl.Close()
		inW.Close()
		outW.Close()
	})
	return &probeVM{ctrl: ctrl, api: newAPIClient(t, sock), con: newConsole(t, outR, inW)}
}

func TestSnapshotCreateAndLoadThroughTheAPI(t *testing.T) {
	kvmtest.Require(t)
	probeELF, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("build probe guest: %v", err)
	}
	dir := t.TempDir()
	statePath, memPath := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")

	first := startProbeVM(t, dir, "original")
	first.api.call("PUT", "/boot-source", "BootSource", `{"kernel_image_path": "`+probeELF+`"}`, 204, "")
	first.api.call("PUT", "/machine-config", "MachineConfiguration", `{"vcpu_count": 2, "mem_size_mib": 32}`, 204, "")
	first.api.call("PUT", "/actions", "InstanceActionInfo", `{"action_type": "InstanceStart"}`, 204, "")
	// Pausing at once must work: InstanceStart returns only once the VM
	// accepts pause requests.
	first.api.call("PATCH", "/vm", "Vm", `{"state": "Paused"}`, 204, "")
	first.api.call("PATCH", "/vm", "Vm", `{"state": "Resumed"}`, 204, "")
	first.con.expect(probe.ReadyLine)
	first.con.send("touch 200")
	touched := strings.TrimPrefix(first.con.expect("touched 200 sum="), "touched")

	snap := `{"snapshot_path": "` + statePath + `", "mem_file_path": "` + memPath + `", "snapshot_type": "Full"}`
	first.api.call("PUT", "/snapshot/create", "SnapshotCreateParams", snap, 400, "") // running: must pause first
	first.api.call("PATCH", "/vm", "Vm", `{"state": "Paused"}`, 204, "")
	first.api.call("PUT", "/snapshot/create", "SnapshotCreateParams", snap, 204, "")
	first.ctrl.Stop()

	second := startProbeVM(t, dir, "clone")
	second.api.call("PUT", "/snapshot/load", "SnapshotLoadParams",
		`{"snapshot_path": "`+statePath+`", "mem_backend": {"backend_type": "File", "backend_path": "`+memPath+`"}}`, 204, "")
	if s := second.api.state(); s != "Paused" {
		t.Fatalf("state %q after loading without resume_vm", s)
	}
	second.api.call("GET", "/vm/config", "", "", 200, "FullVmConfiguration")
	second.api.call("PUT", "/actions", "InstanceActionInfo", `{"action_type": "InstanceStart"}`, 400, "")
	second.api.call("PATCH", "/vm", "Vm", `{"state": "Resumed"}`, 204, "")
	second.con.send("sum 200")
	if sum := strings.TrimPrefix(second.con.expect("sum 200 sum="), "sum"); sum != touched {
		t.Fatalf("restored memory sums to %q, the original to %q", sum, touched)
	}
	second.con.send("cpus")
	second.con.expect("cpus 2")
	second.con.send("poweroff")
	select {
	case <-second.ctrl.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("restored VM did not power off; output:\n%s", second.con.output())
	}
}
