package bench

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/trace"
)

func TestJailedArmCommandLines(t *testing.T) {
	j := Jail{Jailer: "/bin/volt-jailer", UID: 1000, GID: 1001, ChrootBase: "/srv/j", IDPrefix: "vb-1"}
	boot := Config{VMM: VMMVolt, VMMBin: "/b/volt-vmm", Guest: GuestProbe, Kernel: "/k/probe.elf", Memory: "128M", CPUs: 1, Timeout: time.Second}
	ja, err := JailedArm(Arm{Name: "volt", Config: boot, Floor: "floor-kvm"}, j)
	if err != nil {
		t.Fatal(err)
	}
	if ja.Name != "volt-jailed" || ja.Floor != "floor-kvm" || ja.Config.Validate() != nil {
		t.Errorf("arm %+v: %v", ja, ja.Config.Validate())
	}
	bin, args, id := ja.Config.command(7)
	want := "--id vb-1-7 --exec-file /b/volt-vmm --uid 1000 --gid 1001 --chroot-base-dir /srv/j --ro-bind /k/probe.elf:/kernel/probe.elf -- --kernel /kernel/probe.elf --memory 128M --cpus 1 --console stdio"
	if bin != "/bin/volt-jailer" || id != "vb-1-7" || strings.Join(args, " ") != want {
		t.Errorf("boot: %s %q (id %s), want %s", bin, args, id, want)
	}
	if got := JailRowNames(ja); !slices.Equal(got, append(append([]string{RowJailExec, RowVMMExec}, StageNames()...), RowJailerExit)) {
		t.Errorf("rows %v", got)
	}
	restore := Config{VMM: VMMVolt, VMMBin: "/b/volt-vmm", Guest: GuestProbe, RestoreDir: "/tmp/snap", CPUs: 1, Timeout: time.Second,
		Ask: RestoreAsk, Answer: RestoreAnswer, Rows: RestoreStages}
	jr, err := JailedArm(Arm{Name: ArmRestore, Config: restore}, j)
	if err != nil {
		t.Fatal(err)
	}
	_, args, _ = jr.Config.command(1)
	if s := strings.Join(args, " "); !strings.Contains(s, "--ro-bind /tmp/snap:/snapshot -- --restore /snapshot --console stdio") {
		t.Errorf("restore: %s", s)
	}
	// The unjailed command line is what it always was.
	if bin, args, id := boot.command(1); bin != "/b/volt-vmm" || id != "" || !slices.Equal(args, boot.Args()) {
		t.Errorf("unjailed: %s %q %s", bin, args, id)
	}
	for _, bad := range []Jail{
		{Jailer: "volt-jailer", UID: 1, GID: 1, ChrootBase: "/j", IDPrefix: "a"},
		{Jailer: "/j", UID: 0, GID: 1, ChrootBase: "/j", IDPrefix: "a"},
		{Jailer: "/j", UID: 1, GID: 1, ChrootBase: "j", IDPrefix: "a"},
		{Jailer: "/j", UID: 1, GID: 1, ChrootBase: "/j", IDPrefix: "a/b"},
	} {
		if _, err := JailedArm(Arm{Name: "volt", Config: boot}, bad); err == nil {
			t.Errorf("jail %+v accepted", bad)
		}
	}
	for _, c := range []Config{
		func() Config { c := boot; c.ExtraArgs = []string{"--vmm-arg"}; return c }(),
		func() Config { c := boot; c.VMM = VMMQEMU; return c }(),
		func() Config { c := boot; c.Kernel = "/k:x/probe.elf"; return c }(),
	} {
		if _, err := JailedArm(Arm{Name: "volt", Config: c}, j); err == nil {
			t.Errorf("jailed %+v", c)
		}
	}
}

// A jailed boot's rows are on the clock of the jailer's exec: the VMM's
// record is shifted by the distance between the two execs, and the
// supervisor's exit is its own.
func TestJailedStagesShareTheJailersClock(t *testing.T) {
	ms := time.Millisecond
	sup := trace.Record{Origin: 100 * ms, Points: []trace.Point{{Milestone: trace.Exec}, {Milestone: trace.Exit, At: 40 * ms}}}
	vmm := trace.Record{Origin: 104 * ms, Points: []trace.Point{
		{Milestone: trace.Exec}, {Milestone: trace.LastExec, At: 10 * ms}, {Milestone: trace.VMCreated, At: 13 * ms}, {Milestone: trace.Exit, At: 30 * ms},
	}}
	rows := JailRows([]Stage{{"vmm-ready", trace.VMCreated, true}, {"exit", trace.Exit, true}})
	got := jailedStages(sup, vmm, rows)
	want := map[string]time.Duration{RowJailExec: 4 * ms, RowVMMExec: 14 * ms, "vmm-ready": 17 * ms, "exit": 34 * ms, RowJailerExit: 40 * ms}
	for k, w := range want {
		if got[k].At != w {
			t.Errorf("%s at %v, want %v", k, got[k].At, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rows %v", got)
	}
	v := NewJailVMMRun(Arm{Name: "volt-jailed", Config: Config{Rows: rows}})
	v.Observe(Arm{Name: "volt-jailed"}, Boot{Stages: got})
	v.Observe(Arm{Name: "volt"}, Boot{Stages: got}) // another arm's: ignored
	if v.Run.VMM != "volt-jailed-vmm" || v.Run.Boots != 1 {
		t.Fatalf("VMM run %s, %d boots", v.Run.VMM, v.Run.Boots)
	}
	if s := v.Run.Stage("vmm-ready"); s == nil || s.P50US < 2990 || s.P50US > 3010 || v.Run.Stage(RowVMMExec) != nil {
		t.Errorf("VMM run's vmm-ready %+v, want 3 ms after the exec of volt-vmm", s)
	}
}
