package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/trace"
)

func TestUsageAndUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errb); code != exitUsage {
		t.Errorf("unknown command: exit %d, want %d", code, exitUsage)
	}
	if code := run(context.Background(), []string{"help"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "gate") {
		t.Errorf("help: exit %d, output %q", code, out.String())
	}
	if code := run(context.Background(), []string{"boot", "--no-such-flag"}, &out, &errb); code != exitUsage {
		t.Errorf("bad flag: exit %d", code)
	}
	if code := run(context.Background(), []string{"gate", "--alpha", "2", "--candidate", "x"}, &out, &errb); code != exitUsage {
		t.Errorf("alpha 2: exit %d", code)
	}
}

// writeRun saves n synthetic boots whose stages from pid1 on are delayed.
func writeRun(t *testing.T, path string, n int, delay time.Duration) {
	t.Helper()
	r := results.NewRun(bench.VMMVolt, bench.GuestProbe, bench.StageNames())
	for i := 0; i < n; i++ {
		jitter := time.Duration(i%7) * 40 * time.Microsecond
		o := results.Observation{Stages: map[string]results.StageTime{
			"vmm-ready":    {At: 2*time.Millisecond + jitter},
			"memory":       {At: 2100*time.Microsecond + jitter},
			"vcpu":         {At: 2500*time.Microsecond + jitter},
			"guest-entry":  {At: 4*time.Millisecond + jitter},
			"kernel-entry": {At: 4100*time.Microsecond + jitter},
			"first-output": {At: 5*time.Millisecond + jitter + delay},
			"pid1":         {At: 4500*time.Microsecond + jitter + delay},
			"ready":        {At: 8*time.Millisecond + jitter + delay},
			"exit":         {At: 20*time.Millisecond + jitter + delay},
		}}
		if err := r.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	data, err := (&results.Results{Runs: []*results.Run{r}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGateJudgesSavedRuns(t *testing.T) {
	dir := t.TempDir()
	base, same, slow := filepath.Join(dir, "base.json"), filepath.Join(dir, "same.json"), filepath.Join(dir, "slow.json")
	writeRun(t, base, 30, 0)
	writeRun(t, same, 20, 0)
	writeRun(t, slow, 20, 20*time.Millisecond)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"gate", "--baseline", base, "--candidate", same}, &out, &errb); code != exitOK {
		t.Errorf("same distribution: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"gate", "--baseline", base, "--candidate", slow}, &out, &errb); code != exitRegressed {
		t.Errorf("20 ms slower: exit %d, want %d\n%s%s", code, exitRegressed, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "REGRESSED") {
		t.Errorf("no table of what regressed:\n%s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"compare", base, slow}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "pid1") {
		t.Errorf("compare files: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if code := run(context.Background(), []string{"gate", "--baseline", filepath.Join(dir, "missing.json"), "--candidate", slow}, &out, &errb); code != exitError {
		t.Errorf("missing baseline: exit %d, want %d", code, exitError)
	}
}

// syncBuffer lets the test read what the server goroutine writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServeExposesBootMetricsOnLoopback(t *testing.T) {
	if testing.Short() {
		t.Skip("boots guests")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	if tr, err := trace.New(); errors.Is(err, trace.ErrUnsupported) {
		t.Skipf("eBPF tracer cannot load: %v", err)
	} else if err != nil {
		t.Fatal(err)
	} else {
		tr.Close()
	}
	root, err := bench.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "bin", "volt-vmm")); err != nil {
		t.Skipf("bin/volt-vmm not built: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"serve", "--metrics-listen", "127.0.0.1:0", "--interval", "100ms"}, &stdout, &stderr)
	}()
	addrRE := regexp.MustCompile(`metrics on (http://127\.0\.0\.1:\d+/metrics)`)
	deadline := time.Now().Add(30 * time.Second)
	var body string
	for time.Now().Before(deadline) {
		if m := addrRE.FindStringSubmatch(stderr.String()); m != nil {
			resp, err := http.Get(m[1])
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = string(b)
				if strings.Contains(body, `volt_boot_stage_seconds_count{stage="pid1",vmm="volt"}`) {
					break
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("serve exited %d: %s", code, stderr.String())
	}
	for _, want := range []string{`volt_boot_stage_seconds_bucket{stage="pid1",vmm="volt",le=`, `volt_boots_total{vmm="volt"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q:\n%s\nstderr: %s", want, body, stderr.String())
		}
	}
}

// Bad input gets a clear message and the right status, never a hang: FIFOs
// where files are expected are refused without being opened.
func TestBadInputIsRefusedClearly(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.json")
	writeRun(t, good, 12, 0)
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"gate", "--baseline", fifo, "--candidate", good}, exitError, "not a regular file"},
		{[]string{"gate", "--baseline", good, "--candidate", fifo}, exitError, "not a regular file"},
		{[]string{"gate", "extra"}, exitUsage, "unexpected argument"},
		{[]string{"compare", fifo}, exitError, "not a regular file"},
		{[]string{"compare", good, "--plot", fifo}, exitError, "refusing to replace it"},
		{[]string{"compare", good, "--plot", filepath.Join(dir, "no", "such", "dir.svg")}, exitError, "--plot"},
		{[]string{"floor", "--memory", "0"}, exitUsage, "memory"},
		{[]string{"floor", "extra"}, exitUsage, "unexpected argument"},
		{[]string{"floor", "--floor-dir", dir}, exitError, "bench/floor/build.sh"},
		{[]string{"restore", "--concurrency", "0"}, exitUsage, "concurrency 0"},
		{[]string{"restore", "--concurrency", "2,2"}, exitUsage, "given twice"},
		{[]string{"restore", "--concurrency", "1", "--concurrency-n", "2"}, exitUsage, "per round"},
		{[]string{"restore", "-n", "0"}, exitUsage, "at least one"},
		{[]string{"serve", "--interval", "-1s"}, exitUsage, "interval"},
		{[]string{"boot", "--kernel", fifo}, exitError, "not a regular file"},
		{[]string{"boot", "--vmm", "bochs"}, exitError, "bochs"},
		{[]string{"boot", "--guest", "windows"}, exitError, "windows"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), c.args, &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.says) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d saying %q", c.args, code, errb.String(), c.code, c.says)
		}
	}
	// The saved run is untouched by the refused plot.
	if _, err := bench.ReadResults(good); err != nil {
		t.Error(err)
	}
}

// compare of a saved boot run that holds its floor prints the ×floor
// columns again, and plots it.
func TestCompareOfASavedRunShowsItsFloor(t *testing.T) {
	volt := results.NewRun("volt", bench.GuestProbe, []string{"pid1"})
	floor := results.NewRun("floor-kvm", "", []string{"pid1"})
	floor.Floor, floor.Unit, volt.FloorRun = true, results.UnitRuns, "floor-kvm"
	for i := 0; i < 5; i++ {
		volt.Add(results.Observation{Stages: map[string]results.StageTime{"pid1": {At: 4 * time.Millisecond}}})
		floor.Add(results.Observation{Stages: map[string]results.StageTime{"pid1": {At: time.Millisecond}}})
	}
	dir := t.TempDir()
	path, svg := filepath.Join(dir, "run.json"), filepath.Join(dir, "run.svg")
	if err := bench.WriteResults(path, []*results.Run{floor, volt}, []string{"test"}); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"compare", path, "--plot", svg}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "p50 ×floor") || !strings.Contains(out.String(), "4.00×") {
		t.Errorf("no distance to the saved floor:\n%s", out.String())
	}
	data, err := os.ReadFile(svg)
	if err != nil || !strings.Contains(string(data), "4.0× floor") {
		t.Errorf("plot: %v\n%.300s", err, data)
	}
}
