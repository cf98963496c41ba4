package results_test

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/gate"
	"github.com/voltvmm/volt/bench/report"
	. "github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/results/resultstest"
	"github.com/voltvmm/volt/bench/stats"
)

func TestResultsRoundTrip(t *testing.T) {
	run := resultstest.Run("volt", 25, 1, 1)
	if err := run.Add(Observation{Failed: true}); err != nil {
		t.Fatal(err)
	}
	data, err := (&Results{Created: time.Unix(0, 0).UTC(), Runs: []*Run{run}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	res, err := ParseResults(data)
	if err != nil {
		t.Fatalf("parse what we wrote: %v\n%s", err, data)
	}
	got := res.Run("volt")
	if got == nil || got.Boots != 26 || got.Failures != 1 {
		t.Fatalf("run = %+v", got)
	}
	for _, s := range run.Stages {
		g := got.Stage(s.Stage)
		if g.Count != 25 || g.P50US != s.P50US || g.MaxUS != s.MaxUS {
			t.Errorf("%s: read %+v, wrote %+v", s.Stage, g, s)
		}
		a, b := s.Samples(), g.Samples()
		if len(a) != 25 || len(b) != 25 {
			t.Fatalf("%s: %d and %d samples", s.Stage, len(a), len(b))
		}
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s: sample %d differs: %v vs %v", s.Stage, i, a[i], b[i])
			}
		}
	}
	// Summarising a parsed run again keeps its exit means.
	again, err := res.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(again), `"userspace_exits_mean": 3`) {
		t.Errorf("exit means lost on re-encoding:\n%s", again)
	}
}

// With fewer than 100 boots a stage has no p99 at all, in memory and in the
// file: its tail is the maximum, and says so.
func TestP99OnlyFromAHundredBoots(t *testing.T) {
	for _, c := range []struct {
		n     int
		label string
	}{{20, "max"}, {99, "max"}, {100, "p99"}, {150, "p99"}} {
		run := resultstest.Run("volt", c.n, 1, uint64(c.n))
		s := run.Stage("pid1")
		tail, label := s.Tail()
		if label != c.label {
			t.Errorf("%d boots: tail labelled %q, want %q", c.n, label, c.label)
		}
		data, err := (&Results{Runs: []*Run{run}}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		hasP99 := strings.Contains(string(data), `"p99_us"`)
		switch {
		case c.label == "max" && (s.P99US != nil || hasP99 || tail != s.MaxUS):
			t.Errorf("%d boots: a p99 (%v, in file %v) or a tail %v other than the max %v", c.n, s.P99US, hasP99, tail, s.MaxUS)
		case c.label == "p99" && (s.P99US == nil || !hasP99 || tail != *s.P99US || tail > s.MaxUS):
			t.Errorf("%d boots: p99 %v (in file %v), tail %v, max %v", c.n, s.P99US, hasP99, tail, s.MaxUS)
		}
	}
}

// 0 KVM exits beside exits to user space is impossible where kvm:kvm_exit
// works: such a run says "not measured", and its file has null means.
func TestKVMExitsNotMeasured(t *testing.T) {
	silent := resultstest.Run("volt", 5, 1, 1) // user exits, no kvm exits
	if silent.KVMExitsMeasured() || silent.KVMExitsNote() == "" {
		t.Errorf("0 KVM exits beside %d user exits counted as measured", silent.UserExitsTotal)
	}
	if k := silent.Stage("pid1").KVMExits; k != nil {
		t.Errorf("pid1 kvm exits %v, want nil (n/a)", *k)
	}

	measured := NewRun("volt", "probe", []string{"pid1"})
	must(t, measured.Add(Observation{Stages: map[string]StageTime{"pid1": {At: time.Millisecond, KVMExits: 9, UserExits: 4}}}))
	if !measured.KVMExitsMeasured() || measured.Stage("pid1").KVMExits == nil || *measured.Stage("pid1").KVMExits != 9 {
		t.Errorf("measured run: note %q, pid1 %+v", measured.KVMExitsNote(), measured.Stage("pid1"))
	}

	untraced := NewRun("volt", "probe", []string{"pid1"})
	must(t, untraced.Add(Observation{Stages: map[string]StageTime{"pid1": {At: time.Millisecond}}, KVMExitsUntraced: true}))
	if untraced.KVMExitsMeasured() {
		t.Error("a run whose tracer could not attach kvm:kvm_exit counted as measured")
	}

	// No VM at all (a floor exec helper): zero of each is the truth.
	none := NewRun("floor-exec-c", "", []string{"exit"})
	must(t, none.Add(Observation{Stages: map[string]StageTime{"exit": {At: time.Millisecond}}}))
	if !none.KVMExitsMeasured() {
		t.Errorf("a process without exits counted as not measured: %q", none.KVMExitsNote())
	}

	data, err := (&Results{Runs: []*Run{silent, measured}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Runs []struct {
			Note   string `json:"kvm_exits_not_measured"`
			Stages []struct {
				KVM *float64 `json:"kvm_exits_mean"`
			} `json:"stages"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Runs[0].Note == "" || raw.Runs[0].Stages[0].KVM != nil {
		t.Errorf("file of the silent run: note %q, kvm mean %v", raw.Runs[0].Note, raw.Runs[0].Stages[0].KVM)
	}
	if raw.Runs[1].Note != "" || raw.Runs[1].Stages[0].KVM == nil {
		t.Errorf("file of the measured run: note %q, kvm mean %v", raw.Runs[1].Note, raw.Runs[1].Stages[0].KVM)
	}
	res, err := ParseResults(data)
	if err != nil {
		t.Fatal(err)
	}
	if res.Runs[0].KVMExitsMeasured() || !res.Runs[1].KVMExitsMeasured() {
		t.Errorf("parsed: silent measured %v, measured measured %v", res.Runs[0].KVMExitsMeasured(), res.Runs[1].KVMExitsMeasured())
	}
}

// The baseline recorded before these rules (format v1, kvm exits 0 beside
// user exits, "p99" of 40 boots) reads as n/a and max now.
func TestVersion1FileReadsHonestly(t *testing.T) {
	data, err := os.ReadFile("testdata/boot-baseline-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ParseResults(data)
	if err != nil {
		t.Fatal(err)
	}
	r := res.Run("volt")
	if r == nil || r.KVMExitsMeasured() {
		t.Fatalf("v1 run: %+v", r)
	}
	s := r.Stage("ready")
	if _, label := s.Tail(); label != "max" || s.P99US != nil || s.KVMExits != nil {
		t.Errorf("ready of 40 boots: tail %q, p99 %v, kvm %v", label, s.P99US, s.KVMExits)
	}
}

func TestAddFailsABootWithoutEveryStage(t *testing.T) {
	r := NewRun("volt", "probe", []string{"pid1", "ready"})
	err := r.Add(Observation{Stages: map[string]StageTime{"pid1": {At: time.Millisecond}}})
	if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "ready") {
		t.Errorf("boot without ready: %v, want ErrIncomplete naming ready", err)
	}
	if r.Boots != 1 || r.Failures != 1 || r.Stage("pid1").Count != 0 {
		t.Errorf("boots %d, failures %d, pid1 count %d: the incomplete boot must count as failed and untimed", r.Boots, r.Failures, r.Stage("pid1").Count)
	}
}

func TestSamplesStayWithinHistogramPrecision(t *testing.T) {
	r := NewRun("volt", "probe", []string{"pid1"})
	want := []float64{1234, 5678, 91011, 1_500_000}
	for _, us := range want {
		must(t, r.Add(Observation{Stages: map[string]StageTime{"pid1": {At: time.Duration(us) * time.Microsecond}}}))
	}
	got := r.Stage("pid1").Samples()
	for i := range want {
		if math.Abs(got[i]-want[i]) > want[i]*0.001 {
			t.Errorf("sample %v came back as %v", want[i], got[i])
		}
	}
}

func TestParseResultsRejects(t *testing.T) {
	good, err := (&Results{Runs: []*Run{resultstest.Run("volt", 3, 1, 2)}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	encoded, err := ParseResults(good)
	if err != nil {
		t.Fatal(err)
	}
	hist := encoded.Runs[0].Stage("pid1").Histogram
	if hist == "" {
		t.Fatal("no encoded histogram in a written file")
	}
	for name, doc := range map[string]string{
		"not json":         "{",
		"wrong format":     `{"format":"other","runs":[{"vmm":"volt"}]}`,
		"no runs":          `{"format":"voltbench/v2","runs":[]}`,
		"null run":         `{"format":"voltbench/v2","runs":[null]}`,
		"failures > boots": `{"format":"voltbench/v2","runs":[{"vmm":"volt","boots":1,"failures":2}]}`,
		"count mismatch":   `{"format":"voltbench/v2","runs":[{"vmm":"volt","boots":3,"stages":[{"stage":"pid1","count":4,"histogram":"` + hist + `"}]}]}`,
		"negative exits":   `{"format":"voltbench/v2","runs":[{"vmm":"volt","boots":3,"stages":[{"stage":"pid1","count":3,"userspace_exits_mean":-1,"histogram":"` + hist + `"}]}]}`,
		"bad base64":       `{"format":"voltbench/v2","runs":[{"vmm":"volt","stages":[{"stage":"pid1","count":1,"histogram":"!!"}]}]}`,
		"short histogram":  `{"format":"voltbench/v2","runs":[{"vmm":"volt","stages":[{"stage":"pid1","count":1,"histogram":"HISt"}]}]}`,
		"repeated stage":   `{"format":"voltbench/v2","runs":[{"vmm":"volt","stages":[{"stage":"a"},{"stage":"a"}]}]}`,
		"count, no hist":   `{"format":"voltbench/v2","runs":[{"vmm":"volt","stages":[{"stage":"a","count":2}]}]}`,
		"bad unit":         `{"format":"voltbench/v2","runs":[{"vmm":"volt","unit":"furlongs"}]}`,
		"long note":        `{"format":"voltbench/v2","runs":[{"vmm":"volt","kvm_exits_not_measured":"` + strings.Repeat("x", 2000) + `"}]}`,
	} {
		if _, err := ParseResults([]byte(doc)); !errors.Is(err, ErrBadResults) {
			t.Errorf("%s: err = %v, want ErrBadResults", name, err)
		}
	}
	if _, err := ParseResults(good); err != nil {
		t.Errorf("good file refused: %v", err)
	}
}

func FuzzParseResults(f *testing.F) {
	good, err := (&Results{Runs: []*Run{resultstest.Run("volt", 5, 1, 3), resultstest.Run("qemu", 5, 20, 4)}}).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	if v1, err := os.ReadFile("testdata/boot-baseline-v1.json"); err == nil {
		f.Add(v1)
	}
	f.Add([]byte(`{"format":"voltbench/v1","runs":[{"vmm":"volt","stages":[{"stage":"pid1","count":1,"histogram":"HISTFAAAACB4nJNpmSzMwMDAxMDAwMDAAAAbqAHk"}]}]}`))
	f.Add([]byte(`{"format":"voltbench/v2","runs":[{"vmm":"v","floor":true,"stages":[{"stage":"a","count":0,"histogram":""}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := ParseResults(data)
		if err != nil {
			if !errors.Is(err, ErrBadResults) {
				t.Fatalf("error %v does not wrap ErrBadResults", err)
			}
			return
		}
		// Whatever parses must survive every use voltbench makes of it.
		for _, r := range res.Runs {
			for _, s := range r.Stages {
				if int64(len(s.Samples())) != s.Count {
					t.Fatalf("stage %s: %d samples, count %d", s.Stage, len(s.Samples()), s.Count)
				}
				if _, label := s.Tail(); (label == "p99") != (s.P99US != nil) {
					t.Fatalf("stage %s of %d: tail %q, p99 %v", s.Stage, s.Count, label, s.P99US)
				}
			}
		}
		again, err := res.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseResults(again); err != nil {
			t.Fatalf("re-encoded file refused: %v", err)
		}
		_ = report.WriteTable(discard{}, res.Runs[0], nil)
		_ = report.WriteFloors(discard{}, res.Runs...)
		// The gate and the plots cost time in the samples (a permutation
		// test of 200,000 is minutes); the fuzzer is after malformed
		// structure, which small files have too.
		for _, r := range res.Runs {
			for _, s := range r.Stages {
				if s.Count > 200 {
					return
				}
			}
		}
		if len(res.Runs) > 1 {
			_ = report.WriteCompare(discard{}, res.Runs[0].StageNames(), res.Runs, nil)
			_, _ = gate.Judge(res.Runs[0], res.Runs[1], res.Runs[0].StageNames(), stats.DefaultTolerance())
		}
		_ = report.WriteCDF(discard{}, report.CDFFigure("fuzz", res.Runs[0].StageNames(), res.Runs))
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
