package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/results"
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
