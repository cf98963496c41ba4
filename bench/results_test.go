package bench

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// syntheticRun builds a run of n boots whose stages scale with factor.
func syntheticRun(name string, n int, factor float64, seed uint64) *Run {
	rng := rand.New(rand.NewPCG(seed, seed))
	r := NewRun(name, GuestProbe)
	base := map[string]float64{"vmm-ready": 1800, "memory": 2000, "vcpu": 2800, "guest-entry": 3500,
		"kernel-entry": 3600, "first-output": 4600, "pid1": 4200, "ready": 8000, "exit": 24000}
	for i := 0; i < n; i++ {
		b := Boot{Stages: map[string]StageTime{}}
		for stage, us := range base {
			v := us * factor * math.Exp(0.1*rng.NormFloat64())
			b.Stages[stage] = StageTime{At: time.Duration(v * float64(time.Microsecond)), UserExits: 3}
		}
		r.Add(b)
	}
	return r
}

func TestResultsRoundTrip(t *testing.T) {
	run := syntheticRun("volt", 25, 1, 1)
	run.Add(Boot{Err: ErrTimeout})
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
		if g.Count != 25 || g.P50US != s.P50US || g.P99US != s.P99US {
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

func TestSamplesStayWithinHistogramPrecision(t *testing.T) {
	r := NewRun("volt", GuestProbe)
	want := []float64{1234, 5678, 91011, 1_500_000}
	for _, us := range want {
		r.Add(Boot{Stages: map[string]StageTime{"pid1": {At: time.Duration(us) * time.Microsecond}}})
	}
	got := r.Stage("pid1").Samples()
	for i := range want {
		if math.Abs(got[i]-want[i]) > want[i]*0.001 {
			t.Errorf("sample %v came back as %v", want[i], got[i])
		}
	}
}

func TestParseResultsRejects(t *testing.T) {
	good, err := (&Results{Runs: []*Run{syntheticRun("volt", 3, 1, 2)}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	hist := syntheticRun("volt", 3, 1, 2).Stage("pid1").Histogram
	for name, doc := range map[string]string{
		"not json":         "{",
		"wrong format":     `{"format":"other","runs":[{"vmm":"volt"}]}`,
		"no runs":          `{"format":"voltbench/v1","runs":[]}`,
		"null run":         `{"format":"voltbench/v1","runs":[null]}`,
		"failures > boots": `{"format":"voltbench/v1","runs":[{"vmm":"volt","boots":1,"failures":2}]}`,
		"count mismatch":   `{"format":"voltbench/v1","runs":[{"vmm":"volt","boots":3,"stages":[{"stage":"pid1","count":4,"histogram":"` + hist + `"}]}]}`,
		"bad base64":       `{"format":"voltbench/v1","runs":[{"vmm":"volt","stages":[{"stage":"pid1","count":1,"histogram":"!!"}]}]}`,
		"short histogram":  `{"format":"voltbench/v1","runs":[{"vmm":"volt","stages":[{"stage":"pid1","count":1,"histogram":"HISt"}]}]}`,
		"repeated stage":   `{"format":"voltbench/v1","runs":[{"vmm":"volt","stages":[{"stage":"a"},{"stage":"a"}]}]}`,
		"count, no hist":   `{"format":"voltbench/v1","runs":[{"vmm":"volt","stages":[{"stage":"a","count":2}]}]}`,
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
	good, err := (&Results{Runs: []*Run{syntheticRun("volt", 5, 1, 3), syntheticRun("qemu", 5, 20, 4)}}).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"voltbench/v1","runs":[{"vmm":"volt","stages":[{"stage":"pid1","count":1,"histogram":"HISTFAAAACB4nJNpmSzMwMDAxMDAwMDAAAAbqAHk"}]}]}`))
	f.Add([]byte(`{"format":"voltbench/v1","runs":[{"vmm":"v","stages":[{"stage":"a","count":0,"histogram":""}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := ParseResults(data)
		if err != nil {
			return
		}
		// Whatever parses must survive every use voltbench makes of it.
		for _, r := range res.Runs {
			for _, s := range r.Stages {
				if int64(len(s.Samples())) != s.Count {
					t.Fatalf("stage %s: %d samples, count %d", s.Stage, len(s.Samples()), s.Count)
				}
			}
		}
		if _, err := res.Marshal(); err != nil {
			t.Fatal(err)
		}
		_ = WriteTable(discard{}, res.Runs[0])
		if len(res.Runs) > 1 {
			_ = WriteCompare(discard{}, res.Runs...)
			_, _ = Gate(res.Runs[0], res.Runs[1], DefaultTolerance())
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
