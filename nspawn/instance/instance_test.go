package instance

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web", true}, {"a", true}, {"Web-01", true}, {strings.Repeat("a", 63), true},
		{"", false}, {strings.Repeat("a", 64), false}, {"-a", false}, {"a-", false},
		{"a_b", false}, {"a.b", false}, {"a/b", false}, {"..", false}, {"a b", false}, {"ä", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("%q: %v does not wrap ErrBadName", tc.name, err)
		}
	}
}

func TestParseStat(t *testing.T) {
	line := "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n"
	state, start, err := parseStat([]byte(line))
	if err != nil || state != 'S' || start != 987654 {
		t.Fatalf("parseStat: %c %d %v", state, start, err)
	}
	pp, err := parsePPid([]byte(line))
	if err != nil || pp != 1 {
		t.Fatalf("parsePPid: %d %v", pp, err)
	}
	for _, bad := range []string{"", "1234 (x", "1234 (x) S 1 2", "1 (x) SS " + strings.Repeat("1 ", 30)} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1234 (volt) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStat(b)
		parsePPid(b)
	})
}

func TestProcIdentity(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !self.Alive() {
		t.Fatal("this process is not alive")
	}
	if (Proc{PID: self.PID, StartTicks: self.StartTicks + 1}).Alive() {
		t.Error("a reused pid (other start time) counts as alive")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if (Proc{PID: cmd.Process.Pid}).Alive() {
		t.Error("an exited process counts as alive")
	}
	if (Proc{}).Alive() {
		t.Error("pid 0 is alive")
	}
}

func TestWriteJSONIsAtomicAndReadJSONStrict(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	code := 3
	r := Record{Phase: PhaseExited, Manager: ManagerSupervisor, ExitCode: &code, StartedAt: time.Unix(1, 0).UTC()}
	if err := WriteJSON(p, r); err != nil {
		t.Fatal(err)
	}
	var got Record
	if err := ReadJSON(p, &got); err != nil {
		t.Fatal(err)
	}
	if got.Phase != PhaseExited || got.ExitCode == nil || *got.ExitCode != 3 {
		t.Errorf("round trip: %+v", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("temp files left: %v", ents)
	}
	for name, body := range map[string]string{
		"unknown field": `{"phase":"running","bogus":1}`,
		"trailing":      `{"phase":"running"} {}`,
		"not json":      `phase: running`,
		"truncated":     `{"phase":"run`,
	} {
		os.WriteFile(p, []byte(body), 0o600)
		if err := ReadJSON(p, &got); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

type fakeSystemd map[string]UnitState

func (f fakeSystemd) UnitState(_ context.Context, unit string) (UnitState, error) {
	if us, ok := f[unit]; ok {
		return us, nil
	}
	return UnitState{Name: unit}, nil
}

// TestObserve covers every way a record and the world can disagree: the
// record is only what the supervisor last wrote.
func TestObserve(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	mk := func(name string, rec *Record) Dir {
		d, err := NewDir(root, Container, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Create(); err != nil {
			t.Fatal(err)
		}
		if rec != nil {
			if err := d.WriteRecord(*rec); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	self, _ := Self()
	gone := Proc{PID: self.PID, StartTicks: self.StartTicks + 99}
	zero := 0

	created := mk("created", nil)
	exited := mk("exited", &Record{Phase: PhaseExited, ExitCode: &zero})
	failed := mk("failed", &Record{Phase: PhaseFailed, Error: "no such image"})
	dead := mk("dead", &Record{Phase: PhaseRunning, Manager: ManagerSupervisor, Supervisor: gone, Payload: gone})
	orphan := mk("orphan", &Record{Phase: PhaseRunning, Manager: ManagerSupervisor, Supervisor: gone, Payload: self})
	live := mk("live", &Record{Phase: PhaseRunning, Manager: ManagerSupervisor, Supervisor: self})
	lock, err := live.LockSupervisor()
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if _, err := live.LockSupervisor(); !errors.Is(err, ErrLocked) {
		t.Errorf("a second supervisor lock: %v, want ErrLocked", err)
	}
	sysActive := mk("sys-active", &Record{Phase: PhaseRunning, Manager: ManagerSystemd, Unit: "volt-container-sys-active.service", Supervisor: gone})
	sysGone := mk("sys-gone", &Record{Phase: PhaseRunning, Manager: ManagerSystemd, Unit: "volt-container-sys-gone.service", Supervisor: gone})
	damaged := mk("damaged", nil)
	os.WriteFile(damaged.StatePath(), []byte("{"), 0o600)
	weird := mk("weird", &Record{Phase: "sleeping"})

	q := fakeSystemd{
		"volt-container-sys-active.service": {ActiveState: "active"},
		"volt-container-sys-gone.service":   {ActiveState: "failed", Result: "signal"},
	}
	for _, tc := range []struct {
		d    Dir
		want State
		live bool
	}{
		{created, StateCreated, false},
		{exited, StateExited, false},
		{failed, StateFailed, false},
		{dead, StateDead, false},
		{orphan, StateOrphaned, true},
		{live, StateRunning, true},
		{sysActive, StateRunning, true},
		{sysGone, StateDead, false},
		{damaged, StateDamaged, false},
		{weird, StateDamaged, false},
	} {
		st := tc.d.Observe(ctx, q)
		if st.State != tc.want || st.State.Live() != tc.live {
			t.Errorf("%s: %s (%s), want %s", tc.d.Name, st.State, st.Detail, tc.want)
		}
	}
	if st := sysGone.Observe(ctx, q); !strings.Contains(st.Detail, "signal") {
		t.Errorf("dead unit's detail %q lacks systemd's result", st.Detail)
	}
	lock.Release()
	if st := live.Observe(ctx, q); st.State != StateDead {
		t.Errorf("after the supervisor lock is dropped: %s, want dead", st.State)
	}
	names, err := List(root, Container)
	if err != nil || len(names) != 10 {
		t.Errorf("List: %v %v", names, err)
	}
	if err := created.Create(); !errors.Is(err, ErrExists) {
		t.Errorf("creating twice: %v", err)
	}
}

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		l  Limits
		ok bool
	}{
		{Limits{}, true}, {Limits{MemoryBytes: 64 << 20, CPUs: 0.5}, true},
		{Limits{MemoryBytes: 1 << 20}, false}, {Limits{CPUs: -1}, false}, {Limits{CPUs: 0.001}, false}, {Limits{CPUs: 5000}, false},
	} {
		if err := tc.l.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.l, err)
		}
	}
	if q := (Limits{CPUs: 1.5}).QuotaMicros(); q != 150000 {
		t.Errorf("quota %d", q)
	}
}

func TestUnitProperties(t *testing.T) {
	d, _ := NewDir("/var/lib/volt", Container, "web")
	props := UnitProperties(Launch{Dir: d, Argv: []string{"/usr/bin/volt", "container", "_supervise", "web"}, Description: "x",
		Limits: Limits{MemoryBytes: 256 << 20, CPUs: 1.5}, ReadyTimeout: time.Minute})
	got := map[string]any{}
	for _, p := range props {
		got[p.Name] = p.Value.Value()
	}
	want := map[string]any{
		"Type": "notify", "NotifyAccess": "main", "KillMode": "mixed", "Delegate": true, "Slice": "machine.slice",
		"PrivateMounts": true, "MemoryMax": uint64(256 << 20), "CPUQuotaPerSecUSec": uint64(1500000),
		"StandardOutputFileToAppend": "/var/lib/volt/containers/web/log", "CollectMode": "inactive-or-failed",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, ok := got["ExecStart"]; !ok {
		t.Error("no ExecStart")
	}
}

func TestParseNotify(t *testing.T) {
	m := parseNotify([]byte("READY=1\nSTATUS=running\nERRNO=2"))
	if !m.Ready || m.Status != "running" || m.Errno != "2" {
		t.Errorf("%+v", m)
	}
	if parseNotify([]byte("READY=0\ngarbage")).Ready {
		t.Error("READY=0 is ready")
	}
}
