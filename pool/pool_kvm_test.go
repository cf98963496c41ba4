package pool

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/client"
)

func TestAcquireResumesAWarmVMAndReleaseStopsIt(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 2)
	s.waitWarm(t, "probe", 2)
	ctx := context.Background()

	l, err := s.client.Acquire(ctx, "probe", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l.Path != pc.PathWarm || l.Template != "probe" || l.ID == "" || l.PID <= 0 {
		t.Fatalf("lease %+v", l)
	}
	if d := time.Until(l.ExpiresAt); d < 25*time.Second || d > 31*time.Second {
		t.Errorf("expires in %v, want about 30s", d)
	}
	// The VMM answers on the lease's API socket, running.
	info, err := client.New(l.APISock).Describe(ctx)
	if err != nil || info.State != "Running" {
		t.Fatalf("leased VMM: %+v %v", info, err)
	}
	ls, err := s.client.Leases(ctx)
	if err != nil || len(ls) != 1 || ls[0].ID != l.ID {
		t.Fatalf("leases %+v %v", ls, err)
	}
	// The pool refills behind the acquire.
	s.waitWarm(t, "probe", 2)
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the released VMM to exit", func() bool { return !alive(l.PID) })
	waitFor(t, "its directory to go", func() bool {
		_, err := os.Stat(filepath.Dir(l.APISock))
		return os.IsNotExist(err)
	})
	err = s.client.Release(ctx, l.ID)
	if statusCode(err) != http.StatusGone || !strings.Contains(err.Error(), "released") {
		t.Errorf("second release: %v, want 410 saying released", err)
	}
	st := s.status(t, "probe")
	if st.Leased != 0 || st.Target != 2 {
		t.Errorf("status %+v", st)
	}
}

func TestRenewAndExpiry(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 1)
	s.waitWarm(t, "probe", 1)
	ctx := context.Background()
	l, err := s.client.Acquire(ctx, "probe", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.client.Renew(ctx, l.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !r.ExpiresAt.After(l.ExpiresAt.Add(50 * time.Second)) {
		t.Errorf("renewed to %v, was %v", r.ExpiresAt, l.ExpiresAt)
	}
	// The renewal is on disk: a restarted daemon would honour it.
	var rec pc.Lease
	if err := readJSON(filepath.Join(filepath.Dir(l.APISock), leaseFile), &rec); err != nil || !rec.ExpiresAt.Equal(r.ExpiresAt) {
		t.Errorf("lease record %+v %v", rec, err)
	}
	short, err := s.client.Acquire(ctx, "probe", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the short lease to expire", func() bool { return !alive(short.PID) })
	if _, err := s.client.Lease(ctx, l.ID); err != nil {
		t.Errorf("renewed lease ended too: %v", err)
	}
	err = s.client.Release(ctx, short.ID)
	if statusCode(err) != http.StatusGone || !strings.Contains(err.Error(), "expired") {
		t.Errorf("release of an expired lease: %v, want 410 saying expired", err)
	}
	_, err = s.client.Renew(ctx, short.ID, time.Minute)
	if statusCode(err) != http.StatusGone {
		t.Errorf("renew of an expired lease: %v, want 410", err)
	}
	if st := s.status(t, "probe"); st.Expiries != 1 {
		t.Errorf("expiries %d, want 1", st.Expiries)
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
}

func TestEmptyPoolRestoresCold(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "cold", 0)
	ctx := context.Background()
	l, err := s.client.Acquire(ctx, "cold", 0)
	if err != nil {
		t.Fatal(err)
	}
	if l.Path != pc.PathCold {
		t.Errorf("path %q, want cold", l.Path)
	}
	info, err := client.New(l.APISock).Describe(ctx)
	if err != nil || info.State != "Running" {
		t.Fatalf("cold VMM: %+v %v", info, err)
	}
	if st := s.status(t, "cold"); st.ColdPaths != 1 || st.Warm != 0 {
		t.Errorf("status %+v", st)
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
}

func warmPIDs(s *served, template string) []int {
	var pids []int
	for _, v := range s.pool.VMs() {
		if v.Template == template && v.State == string(vmWarm) {
			pids = append(pids, v.PID)
		}
	}
	return pids
}

func TestWarmVMMKilledIsReapedAndReplaced(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 2)
	s.waitWarm(t, "probe", 2)
	victim := warmPIDs(s, "probe")[0]
	if err := unix.Kill(victim, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the death to be counted", func() bool { return s.status(t, "probe").Deaths == 1 })
	s.waitWarm(t, "probe", 2)
	for _, pid := range warmPIDs(s, "probe") {
		if pid == victim {
			t.Errorf("the killed VMM %d is still listed warm", victim)
		}
	}
	// Reaped, not a zombie of ours.
	var ws unix.WaitStatus
	if _, err := unix.Wait4(victim, &ws, unix.WNOHANG, nil); err != unix.ECHILD {
		t.Errorf("wait4 on the killed VMM: %v, want ECHILD (already reaped)", err)
	}
	// And the pool still hands out VMs.
	l, err := s.client.Acquire(context.Background(), "probe", 0)
	if err != nil || l.Path != pc.PathWarm {
		t.Fatalf("acquire after a death: %+v %v", l, err)
	}
	s.client.Release(context.Background(), l.ID)
}

func TestLeasedVMMKilledEndsTheLease(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 1)
	s.waitWarm(t, "probe", 1)
	ctx := context.Background()
	l, err := s.client.Acquire(ctx, "probe", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(l.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lease to end", func() bool {
		_, err := s.client.Lease(ctx, l.ID)
		return statusCode(err) == http.StatusGone
	})
	err = s.client.Release(ctx, l.ID)
	if statusCode(err) != http.StatusGone || !strings.Contains(err.Error(), "exited") {
		t.Errorf("release after the VMM died: %v, want 410 saying it exited", err)
	}
	st := s.status(t, "probe")
	if st.Leased != 0 || st.Deaths != 1 {
		t.Errorf("status %+v", st)
	}
}

func TestBadRequestsGetClearErrors(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 1)
	s.waitWarm(t, "probe", 1)
	ctx := context.Background()
	l, err := s.client.Acquire(ctx, "probe", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer s.client.Release(ctx, l.ID)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (netConn, error) {
		return dialUnix(ctx, s.socket)
	}}}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"unknown template", "POST", "/v1/leases", `{"template":"nope"}`, 404, `no template "nope"`},
		{"bad ttl", "POST", "/v1/leases", `{"template":"probe","ttl":"soon"}`, 400, `bad ttl "soon"`},
		{"ttl too short", "POST", "/v1/leases", `{"template":"probe","ttl":"1ms"}`, 400, "out of range"},
		{"ttl too long", "POST", "/v1/leases", `{"template":"probe","ttl":"1000h"}`, 400, "out of range"},
		{"malformed JSON", "POST", "/v1/leases", `{"template":`, 400, "malformed JSON"},
		{"two objects", "POST", "/v1/leases", `{"template":"probe"}{}`, 400, "more than one"},
		{"unknown field", "POST", "/v1/leases", `{"template":"probe","tll":"1s"}`, 400, `unknown field "tll"`},
		{"empty body", "POST", "/v1/leases", ``, 400, "empty body"},
		{"no template", "POST", "/v1/leases", `{}`, 400, "needs a template"},
		{"unknown lease", "DELETE", "/v1/leases/0123", ``, 404, `no lease "0123"`},
		{"renew without ttl", "POST", "/v1/leases/" + l.ID + "/renew", `{}`, 400, "needs a ttl"},
		{"renew bad ttl", "POST", "/v1/leases/" + l.ID + "/renew", `{"ttl":"-5s"}`, 400, "out of range"},
		{"template exists", "POST", "/v1/templates", `{"name":"probe","kernel":"/bin/true"}`, 409, "already exists"},
		{"template bad name", "POST", "/v1/templates", `{"name":"../x","kernel":"/bin/true"}`, 400, "template name"},
		{"template relative kernel", "POST", "/v1/templates", `{"name":"x","kernel":"probe.elf"}`, 400, "absolute path"},
		{"template kernel is a FIFO", "POST", "/v1/templates", `{"name":"x","kernel":"` + mkfifo(t) + `"}`, 400, "not a regular file"},
		{"template no kernel", "POST", "/v1/templates", `{"name":"x"}`, 400, "needs a kernel"},
		{"template negative warm", "POST", "/v1/templates", `{"name":"x","kernel":"/bin/true","warm":-1}`, 400, "warm -1"},
		{"snapshot missing", "POST", "/v1/templates", `{"name":"x","from_snapshot":"/nonexistent"}`, 400, "no such file"},
		{"remove unknown template", "DELETE", "/v1/templates/nope", ``, 404, `no template "nope"`},
		{"unknown endpoint", "GET", "/v2/things", ``, 404, "no endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://voltpool"+tc.path, strings.NewReader(tc.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e pc.Error
			json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != tc.status || !strings.Contains(e.Error, tc.want) {
				t.Errorf("%d %q, want %d with %q", resp.StatusCode, e.Error, tc.status, tc.want)
			}
		})
	}
	// Nothing of the above disturbed the lease or the pool.
	if _, err := s.client.Lease(ctx, l.ID); err != nil {
		t.Errorf("lease after bad requests: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.state, "templates", "x")); !os.IsNotExist(err) {
		t.Errorf("a refused template left files: %v", err)
	}
}

func mkfifo(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A lease belongs to the uid that took it: another (unprivileged) uid is
// refused with 403, through the socket's 0660 group permission.
func TestSomeoneElsesLeaseIsForbidden(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 1)
	s.waitWarm(t, "probe", 1)
	ctx := context.Background()
	l, err := s.client.Acquire(ctx, "probe", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a directory only root may enter: run a
	// copy that uid 65534 can execute.
	exe := filepath.Join(shortDir(t), "helper")
	if err := copySparse(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	os.Chmod(exe, 0o755)
	for _, op := range []string{"release", "renew"} {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), helperEnv+"="+op+" "+s.socket+" "+l.ID)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 0}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.HasPrefix(string(out), "403 ") || !strings.Contains(string(out), "belongs to uid 0") {
			t.Errorf("%s by uid 65534: %v %q, want 403 saying it belongs to uid 0", op, err, out)
		}
	}
	if _, err := s.client.Lease(ctx, l.ID); err != nil {
		t.Errorf("the lease was disturbed: %v", err)
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Errorf("owner's release: %v", err)
	}
}

func TestShutdownDrainsAndLeavesNothing(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 3)
	s.waitWarm(t, "probe", 3)
	l, err := s.client.Acquire(context.Background(), "probe", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	pids := append(warmPIDs(s, "probe"), l.PID)
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("VMM %d survived the shutdown", pid)
		}
	}
	if _, err := os.Stat(s.socket); !os.IsNotExist(err) {
		t.Errorf("the API socket is still there: %v", err)
	}
	// The template is still on disk for the next daemon.
	if _, err := os.Stat(filepath.Join(s.state, "templates", "probe", templateFile)); err != nil {
		t.Errorf("template record: %v", err)
	}
}

func TestTemplateRemoveStopsWarmKeepsLeases(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "probe", 2)
	s.waitWarm(t, "probe", 2)
	ctx := context.Background()
	l, err := s.client.Acquire(ctx, "probe", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "probe", 2)
	warm := warmPIDs(s, "probe")
	if err := s.client.RemoveTemplate(ctx, "probe"); err != nil {
		t.Fatal(err)
	}
	for _, pid := range warm {
		waitFor(t, "warm VMMs of a removed template to stop", func() bool { return !alive(pid) })
	}
	if !alive(l.PID) {
		t.Error("the leased VM of a removed template was stopped")
	}
	if _, err := s.client.Acquire(ctx, "probe", 0); statusCode(err) != http.StatusNotFound {
		t.Errorf("acquire of a removed template: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.state, "templates", "probe")); !os.IsNotExist(err) {
		t.Errorf("template directory: %v", err)
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Error(err)
	}
}

func TestTemplateFromSnapshotWithANetnsPerClone(t *testing.T) {
	s := serve(t, Config{})
	s.probeTemplate(t, "base", 0)
	ctx := context.Background()
	snapDir := filepath.Join(s.state, "templates", "base", "snapshot")
	tpl, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "net", FromSnapshot: snapDir, Warm: 2,
		Network: &pc.Network{HostDevName: "vtap0", GuestMAC: "06:00:ac:10:00:02"}})
	if err != nil {
		t.Fatal(err)
	}
	if tpl.MemBytes == 0 || tpl.Network == nil || tpl.Network.IfaceID != "eth0" {
		t.Errorf("template %+v", tpl)
	}
	s.waitWarm(t, "net", 2)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.client.Acquire(ctx, "net", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{host: true}
	pids := append(warmPIDs(s, "net"), l.PID)
	for _, pid := range pids {
		ns, err := os.Readlink("/proc/" + itoa(pid) + "/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		if seen[ns] {
			t.Errorf("VMM %d shares network namespace %s", pid, ns)
		}
		seen[ns] = true
		if !tapIn(t, pid, "vtap0") {
			t.Errorf("VMM %d's namespace has no TAP vtap0", pid)
		}
		// This snapshot has no network device: the VMM holds no TAP
		// (the control of the network test).
		if holdsTAP(pid, "vtap0") {
			t.Errorf("VMM %d holds vtap0 with no device behind it", pid)
		}
	}
	if l.Netns != "/proc/"+itoa(l.PID)+"/ns/net" {
		t.Errorf("lease netns %q", l.Netns)
	}
	if _, err := os.Stat("/sys/class/net/vtap0"); !os.IsNotExist(err) {
		t.Errorf("a TAP vtap0 exists on the host: %v", err)
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
}

// A template booted with a network: every clone's VMM opens a TAP of the
// snapshot's name, each in its own namespace (its /dev/net/tun fd is
// attached to it: fdinfo says "iff: vtap1").
func TestNetworkTemplateClonesEachHoldTheirOwnTAP(t *testing.T) {
	_, kernel, _ := fixture(t)
	s := serve(t, Config{})
	ctx := context.Background()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "net", Kernel: kernel, MemoryMiB: 64, Warm: 2,
		Network: &pc.Network{HostDevName: "vtap1", GuestMAC: "06:00:ac:10:00:02"}}); err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "net", 2)
	l, err := s.client.Acquire(ctx, "net", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s.waitWarm(t, "net", 2)
	seen := map[string]bool{}
	for _, v := range s.pool.VMs() {
		ns, _ := os.Readlink("/proc/" + itoa(v.PID) + "/ns/net")
		if seen[ns] {
			t.Errorf("VMM %d shares its namespace", v.PID)
		}
		seen[ns] = true
		if !tapIn(t, v.PID, "vtap1") || !holdsTAP(v.PID, "vtap1") {
			t.Errorf("VMM %d (%s): vtap1 up %v, held by the VMM %v", v.PID, v.State, tapIn(t, v.PID, "vtap1"), holdsTAP(v.PID, "vtap1"))
		}
	}
	if len(seen) != 3 {
		t.Errorf("%d namespaces for 3 VMMs", len(seen))
	}
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
}
