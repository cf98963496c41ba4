package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/internal/testbin"
)

func TestRestoreAndClonesFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"help"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "restore") || !strings.Contains(out.String(), "clones") || !strings.Contains(out.String(), "dedup") {
		t.Errorf("help does not list restore, clones and dedup: %q", out.String())
	}
	for _, args := range [][]string{
		{"restore", "--no-such-flag"},
		{"restore", "extra"},
		{"restore", "--touch", "-1"},
		{"clones", "-n", "0"},
		{"clones", "--touch", "-5"},
		{"clones", "extra"},
		{"restore", "--from", "nowhere"},
		{"restore", "--from", "cas", "--chunk-size", "3M"},
		{"restore", "--from", "cas", "--chunk-size", "2M,2M"},
		{"restore", "--from", "both", "--chunk-size", "2K"},
		{"restore", "--chunk-size", "256K"}, // a chunk size without a CAS arm
		{"restore", "--jail-uid", "5"},      // jail flags without --jail
		{"restore", "--jailer-bin", "/x"},
		{"restore", "--from", "cas", "--jail"}, // a jailed CAS restore is not built
		{"restore", "--from", "cas", "--ab-vmm-bin", "/x"},
		{"boot", "--jail-dir", "/x"},
		{"boot", "--jail-gid", "5"},
		{"clones", "--arms", "nope"},
		{"clones", "--arms", "cas,cas"},
		{"clones", "--arms", ""},
		{"clones", "--snapshots", "3"},
		{"clones", "--snapshots", "0"},
		{"clones", "--arms", "private", "--touch", "0"},
		{"dedup", "--chunk-size", "5K"},
		{"dedup", "--chunk-size", "64K,64K"},
		{"dedup", "--work", "poweroff"},
		{"dedup", "--work", "touch 10"}, // one snapshot dedups against nothing
		{"dedup", "--touch", "-1"},
		{"dedup", "-n", "10"},
		{"dedup", "extra"},
	} {
		errb.Reset()
		if code := run(context.Background(), args, &out, &errb); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (%s)", args, code, exitUsage, errb.String())
		}
	}
	errb.Reset()
	if code := run(context.Background(), []string{"restore", "--help"}, &out, &errb); code != exitOK || !strings.Contains(errb.String(), "--compare-boot") || !strings.Contains(errb.String(), "--from") ||
		!strings.Contains(errb.String(), "--jail") || !strings.Contains(errb.String(), "--ab-vmm-bin") {
		t.Errorf("restore --help: exit %d, %q", code, errb.String())
	}
	for cmd, flag := range map[string]string{"clones": "--arms", "dedup": "--work"} {
		errb.Reset()
		if code := run(context.Background(), []string{cmd, "--help"}, &out, &errb); code != exitOK || !strings.Contains(errb.String(), flag) {
			t.Errorf("%s --help: exit %d, %q", cmd, code, errb.String())
		}
	}
}

func TestCompareShowsSavedRestoreRunsWithTheirRows(t *testing.T) {
	var runs []*results.Run
	for i, name := range []string{bench.ArmColdBoot, bench.ArmRestore} {
		r := results.NewRun(name, bench.GuestProbe, bench.RestoreStageNames())
		st := map[string]results.StageTime{}
		for j, s := range bench.RestoreStageNames() {
			st[s] = results.StageTime{At: time.Duration(j+1+i) * time.Millisecond}
		}
		if err := r.Add(results.Observation{Stages: st}); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	data, err := (&results.Results{Runs: runs}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "restore.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"compare", path}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "first-answer") || strings.Contains(out.String(), "pid1") {
		t.Errorf("saved restore runs not shown with the restore rows:\n%s", out.String())
	}
}

// requireTracer skips where guests cannot be booted and traced here.
func requireTracer(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("restores guests")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	tr, err := trace.New()
	if errors.Is(err, trace.ErrUnsupported) {
		t.Skipf("eBPF tracer cannot load: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	tr.Close()
}

// restore --ab-vmm-bin: a baseline that restores the candidate's snapshot
// shares it; one that refuses it (here a wrapper that restores only
// snapshots under baseline/, which its own are) restores its own, and the
// run says so. Both arms restore every time and are compared.
func TestRestoreABUsesTheCandidatesSnapshotOrTheBaselinesOwn(t *testing.T) {
	requireTracer(t)
	vmm := testbin.Build(t, "./cmd/volt-vmm")
	// A short --dir: the snapshot's API socket path must fit sun_path.
	dir, err := os.MkdirTemp("", "vbab")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	args := []string{"restore", "-n", "2", "--compare-boot=false", "--floor=false", "--no-progress", "--vmm-bin", vmm, "--dir", dir}
	if p := os.Getenv("VOLT_PROBE"); p != "" {
		args = append(args, "--kernel", p)
	}
	picky := filepath.Join(t.TempDir(), "picky-volt-vmm")
	script := "#!/bin/sh\ncase \"$*\" in\n*--restore*/baseline*) ;;\n*--restore*) echo 'picky-volt-vmm: not my snapshot' >&2; exit 1 ;;\nesac\nexec " + vmm + " \"$@\"\n"
	if err := os.WriteFile(picky, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		base, want string
	}{
		{vmm, "restores the candidate's snapshot"},
		{picky, "cannot restore the candidate's snapshot ("},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), append(args, "--ab-vmm-bin", c.base), &out, &errb); code != exitOK {
			t.Fatalf("--ab-vmm-bin %s: exit %d\n%s\n%s", c.base, code, out.String(), errb.String())
		}
		for _, w := range []string{c.want, "restore-base 2/2 ok, restore 2/2 ok", "ratio = candidate / baseline"} {
			if !strings.Contains(out.String(), w) {
				t.Errorf("--ab-vmm-bin %s: no %q in\n%s", c.base, w, out.String())
			}
		}
	}
}
