package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/trace"
)

func TestRestoreArmsDriveBothSidesAlike(t *testing.T) {
	boot := Config{VMM: VMMVolt, VMMBin: "/bin/volt-vmm", Guest: GuestProbe, Kernel: "probe.elf", Memory: "128M", CPUs: 2, Timeout: time.Second}
	snap := &Snapshot{Dir: "/snap", Memory: "128M", CPUs: 2}
	file := []RestoreTarget{FileTarget(snap)}
	arms, err := RestoreArms(boot, snap, file, true, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(arms) != 2 || arms[0].Name != ArmColdBoot || arms[1].Name != ArmRestore {
		t.Fatalf("arms %+v: want cold boot (the base of the ratios), then restore", arms)
	}
	for _, a := range arms {
		if err := a.Config.Validate(); err != nil {
			t.Errorf("%s: %v", a.Name, err)
		}
		if a.Config.Ask != RestoreAsk || a.Config.Answer != RestoreAnswer {
			t.Errorf("%s asks %q, wants %q", a.Name, a.Config.Ask, a.Config.Answer)
		}
		if got := stageNames(a.Config.rows()); !slices.Equal(got, RestoreStageNames()) {
			t.Errorf("%s rows %v", a.Name, got)
		}
	}
	if got, want := arms[1].Config.Args(), []string{"--restore", "/snap", "--console", "stdio"}; !slices.Equal(got, want) {
		t.Errorf("restore args %q, want %q", got, want)
	}
	if got := arms[0].Config.Args(); !slices.Contains(got, "--kernel") || !slices.Contains(got, "2") {
		t.Errorf("cold boot args %q", got)
	}
	if only, _ := RestoreArms(boot, snap, file, false, ""); len(only) != 1 || only[0].Name != ArmRestore {
		t.Errorf("without --compare-boot: %+v", only)
	}
	if _, err := RestoreArms(boot, snap, nil, true, ""); err == nil {
		t.Error("a session without a restore target")
	}
	// With floors: each arm follows its own floor, and names it.
	dir := fakeFloorDir(t)
	arms, err = RestoreArms(boot, snap, file, true, dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range arms {
		got = append(got, a.Name+"→"+a.Floor)
	}
	if want := "floor-kvm→ cold-boot→floor-kvm floor-kvm-answer→ restore→floor-kvm-answer"; strings.Join(got, " ") != want {
		t.Errorf("arms %q, want %q", strings.Join(got, " "), want)
	}
	if a := arms[2].Config.Args(); !slices.Equal(a, []string{"answer", "128"}) {
		t.Errorf("restore floor args %q", a)
	}
	if _, err := RestoreArms(boot, snap, file, true, t.TempDir()); err == nil || !strings.Contains(err.Error(), "bench/floor/build.sh") {
		t.Errorf("missing helpers: %v, want a hint to build them", err)
	}
}

// The file and CAS arms of --from both restore the same snapshot, driven and
// timed alike, each beside the same restore floor; a CAS arm names its store
// and its chunk size.
func TestRestoreArmsFromFileAndCAS(t *testing.T) {
	boot := Config{VMM: VMMVolt, VMMBin: "/bin/volt-vmm", Guest: GuestProbe, Kernel: "probe.elf", Memory: "128M", CPUs: 1, Timeout: time.Second}
	snap := &Snapshot{Dir: "/snap", Memory: "128M", CPUs: 1}
	own := &CASSnapshot{Store: "/snap/store", Dir: "/snap/cas-2M", ChunkSize: 2 << 20}
	cut := &CASSnapshot{Store: "/snap/store", Dir: "/snap/cas-64K", ChunkSize: 64 << 10}
	targets := []RestoreTarget{FileTarget(snap), CASTarget(own), CASTarget(cut)}
	arms, err := RestoreArms(boot, snap, targets, true, fakeFloorDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range arms {
		got = append(got, a.Name+"→"+a.Floor)
		if err := a.Config.Validate(); err != nil {
			t.Errorf("%s: %v", a.Name, err)
		}
	}
	if want := "floor-kvm→ cold-boot→floor-kvm floor-kvm-answer→ restore→floor-kvm-answer restore-cas-2M→floor-kvm-answer restore-cas-64K→floor-kvm-answer"; strings.Join(got, " ") != want {
		t.Errorf("arms %q, want %q", strings.Join(got, " "), want)
	}
	for i, want := range [][]string{
		{"--restore", "/snap", "--console", "stdio"},
		{"--restore", "/snap/cas-2M", "--console", "stdio", "--cas-store", "/snap/store"},
		{"--restore", "/snap/cas-64K", "--console", "stdio", "--cas-store", "/snap/store"},
	} {
		a := arms[3+i]
		if got := a.Config.Args(); !slices.Equal(got, want) {
			t.Errorf("%s args %q, want %q", a.Name, got, want)
		}
		if a.Config.Ask != RestoreAsk || !slices.Equal(stageNames(a.Config.rows()), RestoreStageNames()) {
			t.Errorf("%s not driven and timed as a restore", a.Name)
		}
	}
	for _, tc := range []struct {
		in        string
		file, cas bool
	}{{"file", true, false}, {"cas", false, true}, {"both", true, true}} {
		f, c, err := ParseFrom(tc.in)
		if err != nil || f != tc.file || c != tc.cas {
			t.Errorf("ParseFrom(%q) = %v %v %v", tc.in, f, c, err)
		}
	}
	for _, bad := range []string{"", "File", "memory", "cas,file"} {
		if _, _, err := ParseFrom(bad); err == nil {
			t.Errorf("ParseFrom(%q) accepted", bad)
		}
	}
}

func TestConfigValidateRestore(t *testing.T) {
	ok := Config{VMM: VMMVolt, VMMBin: "v", Guest: GuestProbe, RestoreDir: "/s", CPUs: 1, Timeout: time.Second, Ask: "echo x", Answer: "x"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("restore without a kernel: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"qemu":           func(c *Config) { c.VMM = VMMQEMU },
		"linux guest":    func(c *Config) { c.Guest = GuestLinux },
		"nothing to ask": func(c *Config) { c.Ask, c.Answer = "", "" },
		"no answer":      func(c *Config) { c.Answer = "" },
		"boot, kernel-less": func(c *Config) {
			c.RestoreDir = ""
		},
	} {
		c := ok
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, c)
		}
	}
}

func TestRestoreStageTimesAndSpans(t *testing.T) {
	ms := time.Millisecond
	rec := trace.Record{Points: []trace.Point{
		{Milestone: trace.Exec},
		{Milestone: trace.VMCreated, At: 3 * ms},
		{Milestone: trace.Memory, At: 4 * ms},
		{Milestone: trace.VCPU, At: 4500 * time.Microsecond},
		{Milestone: trace.GuestEntry, At: 5 * ms},
		{Milestone: trace.FirstOutput, At: 6 * ms, UserExits: 20},
		{Milestone: trace.Answer, At: 6 * ms},
		{Milestone: trace.Exit, At: 9 * ms, UserExits: 30},
	}}
	st := stageTimesFor(rec, RestoreStages)
	if len(st) != len(RestoreStages) {
		t.Fatalf("rows %v", st)
	}
	if st["first-answer"].At != 6*ms || st["first-answer"].UserExits != 20 || st["exit"].UserExits != 30 {
		t.Errorf("first-answer %+v, exit %+v", st["first-answer"], st["exit"])
	}
	spans := &SpanRecorder{Spans: RestoreSpans}
	spans.Observe(Arm{Name: ArmRestore}, Boot{Stages: st})
	var buf bytes.Buffer
	if err := spans.Write(&buf, ArmRestore); err != nil {
		t.Fatal(err)
	}
	// One restore: p50, p90 and max are its span, in each row.
	for span, want := range map[string]string{
		"(process start)": "3.000 3.000 3.000", "(load)": "2.000 2.000 2.000",
		"(vCPU and device state)": "1.000 1.000 1.000", "(guest)": "1.000 1.000 1.000",
	} {
		var row string
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.Contains(l, span) {
				row = l
			}
		}
		if f := strings.Fields(row); len(f) < 3 || strings.Join(f[len(f)-3:], " ") != want {
			t.Errorf("span %s: row %q, want %s", span, row, want)
		}
	}
	run := NewRun(Arm{Name: ArmRestore, Config: Config{RestoreDir: "/s", Rows: RestoreStages}})
	if err := run.Add(Boot{Stages: st}.Observation()); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	report.WriteTable(&buf, run, nil)
	if !strings.Contains(buf.String(), "1 restores") || !strings.Contains(buf.String(), "first-answer") {
		t.Errorf("table:\n%s", buf.String())
	}
}

// fakeFloorDir holds files named as the floor helpers, for tests of the
// arms (nothing runs them).
func fakeFloorDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, h := range []string{FloorExecGo, FloorExecC, FloorKVM} {
		if err := os.WriteFile(filepath.Join(dir, h), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
