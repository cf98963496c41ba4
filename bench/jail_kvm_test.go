package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/internal/testbin"
)

// The tests' jail uid and gid: no account's, and not voltbench's default,
// so that a voltbench run beside the tests never shares it.
const testJailUID = 1899990001

func testJail(t *testing.T) Jail {
	t.Helper()
	return Jail{
		Jailer: testbin.Build(t, "./cmd/volt-jailer"), UID: testJailUID, GID: testJailUID,
		ChrootBase: t.TempDir(), IDPrefix: fmt.Sprintf("vbtest-%d", os.Getpid()),
	}
}

// checkJailedBoot holds a jailed boot to what only a jailed VMM can show:
// the check made while its guest ran saw the uid and gid asked for (never
// 0), no capability and PID 1 of a PID namespace of its own, and its rows
// run in order from the exec of volt-jailer, the jailer's start-up first.
func checkJailedBoot(t *testing.T, a Arm, b Boot, vmmRows []Stage) {
	t.Helper()
	if b.Err != nil {
		t.Errorf("%s: %v", a.Name, b.Err)
		return
	}
	ck := b.Jail
	if ck == nil {
		t.Errorf("%s: no jail check", a.Name)
		return
	}
	if ck.UID != testJailUID || ck.GID != testJailUID || ck.UID == 0 {
		t.Errorf("%s: the VMM ran as uid %d gid %d, want %d", a.Name, ck.UID, ck.GID, testJailUID)
	}
	if f := strings.Fields(ck.NSpid); len(f) != 2 || f[1] != "1" || f[0] == "1" {
		t.Errorf("%s: NSpid %q, want the host's pid, then 1", a.Name, ck.NSpid)
	}
	if strings.Trim(ck.CapEff, "0") != "" {
		t.Errorf("%s: CapEff %s", a.Name, ck.CapEff)
	}
	if b.JailerRecord == nil || b.JailerRecord.Child != ck.PID {
		t.Errorf("%s: the tracer's child %+v is not the VMM checked (%d)", a.Name, b.JailerRecord, ck.PID)
	}
	at := func(name string) time.Duration {
		st, ok := b.Stages[name]
		if !ok {
			t.Errorf("%s: no %s in %v", a.Name, name, b.Stages)
		}
		return st.At
	}
	jail, vmmExec, exit, jailerExit := at(RowJailExec), at(RowVMMExec), at("exit"), at(RowJailerExit)
	if jail <= 0 || vmmExec <= jail || jailerExit < exit {
		t.Errorf("%s: jail-exec %v, vmm-exec %v, exit %v, jailer-exit %v: want 0 < jail-exec < vmm-exec, exit ≤ jailer-exit", a.Name, jail, vmmExec, exit, jailerExit)
	}
	for _, s := range vmmRows {
		if st := at(s.Name); st <= vmmExec || st > exit {
			t.Errorf("%s: %s at %v, not between the exec of volt-vmm (%v) and its exit (%v)", a.Name, s.Name, st, vmmExec, exit)
		}
	}
}

func TestJailedBootsRunInTheJailTimedFromTheJailer(t *testing.T) {
	r := requireRunner(t)
	cfg := voltConfig(t)
	ja, err := JailedArm(Arm{Name: "volt", Config: cfg}, testJail(t))
	if err != nil {
		t.Fatal(err)
	}
	arms := []Arm{{Name: "volt", Config: cfg}, ja}
	vmm := NewJailVMMRun(ja)
	const n = 3
	runs, err := r.RunPlan(context.Background(), Plan{Arms: arms, N: n, Observe: func(a Arm, b Boot) {
		vmm.Observe(a, b)
		if a.Name == ja.Name {
			checkJailedBoot(t, a, b, Stages)
			return
		}
		if b.Err != nil || b.Jail != nil || b.JailerRecord != nil {
			t.Errorf("unjailed boot: %v, jail %+v", b.Err, b.Jail)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := runs[1].StageNames(); len(got) != len(Stages)+3 {
		t.Errorf("jailed rows %v", got)
	}
	for _, run := range []*results.Run{runs[0], runs[1], vmm.Run} {
		for _, s := range run.Rows() {
			if s.Count != n {
				t.Errorf("%s %s: %d boots, want %d", run.VMM, s.Stage, s.Count, n)
			}
		}
	}
	// The VMM's own rows are the jailed ones less the jailer's start-up.
	jr, vr := runs[1].Stage("exit"), vmm.Run.Stage("exit")
	if vr.P50US >= jr.P50US || vmm.Run.Stage(RowVMMExec) != nil {
		t.Errorf("VMM run exit p50 %.0f µs, jailed %.0f µs: want less, and no %s row", vr.P50US, jr.P50US, RowVMMExec)
	}
	if vmm.Checked == nil {
		t.Error("the VMM run kept no jail check")
	}
	// Every boot's chroot went with it.
	ents, _ := os.ReadDir(filepath.Join(ja.Config.Jail.ChrootBase, filepath.Base(cfg.VMMBin)))
	if len(ents) != 0 {
		t.Errorf("chroots left behind: %v", ents)
	}
}

func TestJailedRestoresRunInTheJail(t *testing.T) {
	r := requireRunner(t)
	snap := prepareTestSnapshot(t, 10)
	j := testJail(t)
	if err := snap.ShareWith(j.UID, j.GID); err != nil {
		t.Fatal(err)
	}
	arms, err := RestoreArms(voltConfig(t), snap, []RestoreTarget{FileTarget(snap)}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	ja, err := JailedArm(arms[0], j)
	if err != nil {
		t.Fatal(err)
	}
	arms = append(arms, ja)
	vmm := NewJailVMMRun(ja)
	spans := &SpanRecorder{Spans: JailSpans}
	const n = 3
	_, err = r.RunPlan(context.Background(), Plan{Arms: arms, N: n, Observe: func(a Arm, b Boot) {
		vmm.Observe(a, b)
		spans.Observe(a, b)
		if a.Name == ja.Name {
			checkJailedBoot(t, a, b, RestoreStages)
		} else if b.Err != nil {
			t.Errorf("%s: %v", a.Name, b.Err)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if s := vmm.Run.Stage("first-answer"); s == nil || s.Count != n {
		t.Errorf("jailed restores' first-answer: %+v", s)
	}
	var out strings.Builder
	spans.Write(&out, ja.Name)
	if strings.Contains(out.String(), " - ") {
		t.Errorf("a jailer span without samples:\n%s", out.String())
	}
}

// The check cannot pass for a process that is not jailed: this test
// process runs as root in the host's PID namespace.
func TestJailCheckRefusesAnUnjailedProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	j := &Jail{UID: os.Getuid(), GID: os.Getgid()}
	if j.UID == 0 {
		j.UID, j.GID = testJailUID, testJailUID
	}
	if ck, err := checkJail(os.Getpid(), j, exe); err == nil {
		t.Errorf("checkJail passed this unjailed process: %+v", ck)
	}
}
