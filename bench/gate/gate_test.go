package gate

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/results/resultstest"
	"github.com/voltvmm/volt/bench/stats"
)

// gated are the boot rows voltbench gates (bench.GatedStageNames).
var gated = []string{"vmm-ready", "guest-entry", "first-output", "pid1", "ready", "exit"}

func TestCleanRunsPass(t *testing.T) {
	// Twenty independent clean A/B pairs. Alpha is shared by the twelve
	// tests of a gate, so each pair fails with probability at most 0.01;
	// Binomial(20, 0.01) reaches 3 with probability about 0.001.
	var failed int
	for seed := uint64(0); seed < 20; seed++ {
		base := resultstest.Run("volt", 20, 1, 100+seed)
		cand := resultstest.Run("volt", 20, 1, 200+seed)
		g, err := Judge(base, cand, gated, stats.DefaultTolerance())
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Rows) != 6 {
			t.Fatalf("%d gated rows, want 6", len(g.Rows))
		}
		if g.Failed {
			failed++
			var buf bytes.Buffer
			g.Write(&buf)
			t.Logf("seed %d: clean pair failed (expected about once in 100):\n%s", seed, buf.String())
		}
	}
	if failed > 2 {
		t.Errorf("%d of 20 clean pairs failed the gate", failed)
	}
}

// shifted returns a run like resultstest.Run whose stages from pid1 on are
// delayUS later, as a stall in the guest would make them.
func shifted(n int, seed uint64, delayUS float64) *results.Run {
	src := resultstest.Run("y", n, 1, seed)
	cand := results.NewRun("volt", "probe", resultstest.BootStageNames())
	for i := 0; i < n; i++ {
		o := results.Observation{Stages: map[string]results.StageTime{}}
		for _, s := range src.Stages {
			v := s.Samples()[i]
			if s.Stage == "pid1" || s.Stage == "ready" || s.Stage == "exit" {
				v += delayUS
			}
			o.Stages[s.Stage] = results.StageTime{At: time.Duration(v) * time.Microsecond}
		}
		if err := cand.Add(o); err != nil {
			panic(err)
		}
	}
	return cand
}

func TestARegressionFailsAndSaysWhere(t *testing.T) {
	base := resultstest.Run("volt", 20, 1, 1)
	cand := shifted(20, 3, 5000)
	g, err := Judge(base, cand, gated, stats.DefaultTolerance())
	if err != nil {
		t.Fatal(err)
	}
	if !g.Failed {
		t.Fatal("a 5 ms stall from pid1 on passed the gate")
	}
	var buf bytes.Buffer
	g.Write(&buf)
	out := buf.String()
	for _, r := range g.Rows {
		moved := r.Stage == "pid1" || r.Stage == "ready" || r.Stage == "exit"
		if r.Median.Regressed != moved {
			t.Errorf("%s: p50 regressed = %v, want %v\n%s", r.Stage, r.Median.Regressed, moved, out)
		}
	}
	if !strings.Contains(out, "REGRESSED") || !strings.Contains(out, "gate: FAIL") {
		t.Errorf("table does not say what regressed:\n%s", out)
	}
}

// Below 100 boots a side the tail test compares maxima and is labelled so;
// from 100 on it is a p99.
func TestTailIsLabelledByWhatItCompares(t *testing.T) {
	for _, c := range []struct {
		n     int
		label string
		q     float64
	}{{20, "max", 1}, {100, "p99", 0.99}} {
		g, err := Judge(resultstest.Run("volt", c.n, 1, 1), resultstest.Run("volt", c.n, 1, 2), gated, stats.DefaultTolerance())
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		g.Write(&buf)
		for _, r := range g.Rows {
			if r.TailLabel != c.label || r.Tail.Quantile != c.q {
				t.Errorf("%d boots, %s: tail %q at q=%v, want %q at %v", c.n, r.Stage, r.TailLabel, r.Tail.Quantile, c.label, c.q)
			}
		}
		if !strings.Contains(buf.String(), "cand "+c.label) {
			t.Errorf("%d boots: header does not name the tail %q:\n%s", c.n, c.label, buf.String())
		}
		if c.label == "max" && strings.Contains(buf.String(), "cand p99") {
			t.Errorf("%d boots: a p99 printed:\n%s", c.n, buf.String())
		}
	}
}

func TestMissingStageAndFailedBootsFail(t *testing.T) {
	base := resultstest.Run("volt", 20, 1, 1)
	// A candidate that never reaches ready: every boot failed on it.
	cand := results.NewRun("volt", "probe", resultstest.BootStageNames())
	src := resultstest.Run("volt", 20, 1, 2)
	for i := 0; i < 20; i++ {
		o := results.Observation{Stages: map[string]results.StageTime{}}
		for _, s := range src.Stages {
			if s.Stage != "ready" {
				o.Stages[s.Stage] = results.StageTime{At: time.Duration(s.Samples()[i]) * time.Microsecond}
			}
		}
		if err := cand.Add(o); !errors.Is(err, results.ErrIncomplete) {
			t.Fatalf("boot without ready: %v", err)
		}
	}
	g, err := Judge(base, cand, gated, stats.DefaultTolerance())
	if err != nil {
		t.Fatal(err)
	}
	if !g.Failed {
		t.Error("a candidate that never reaches ready passed")
	}
	cand = resultstest.Run("volt", 20, 1, 2)
	cand.Add(results.Observation{Failed: true})
	g, err = Judge(base, cand, gated, stats.DefaultTolerance())
	if err != nil || !g.Failed {
		t.Errorf("a failed candidate boot: failed %v, err %v", g.Failed, err)
	}
}

func TestRefusesTooFewBoots(t *testing.T) {
	_, err := Judge(resultstest.Run("volt", 20, 1, 1), resultstest.Run("volt", MinSamples-1, 1, 2), gated, stats.DefaultTolerance())
	if !errors.Is(err, ErrInput) {
		t.Fatalf("err = %v, want ErrInput", err)
	}
}

func TestDecideLetsTheABRunDecide(t *testing.T) {
	clean := resultstest.Run("volt", 20, 1, 5)
	slow := shifted(20, 6, 20000)
	tol, ftol := stats.DefaultTolerance(), stats.FileTolerance()
	for _, c := range []struct {
		name     string
		in       Inputs
		failed   bool
		informed int // informational judgements
	}{
		{"file only, clean", Inputs{Cand: resultstest.Run("volt", 20, 1, 7), File: clean, FileTol: ftol}, false, 0},
		{"file only, slow", Inputs{Cand: slow, File: clean, FileTol: ftol}, true, 0},
		// A slow file baseline says nothing once an A/B exists.
		{"A/B clean, file says slow", Inputs{Cand: slow, File: clean, FileTol: ftol, AB: shifted(20, 8, 20000), ABTol: tol}, false, 1},
		{"A/B slow", Inputs{Cand: slow, File: slow, FileTol: ftol, AB: clean, ABTol: tol}, true, 1},
	} {
		c.in.Gated = gated
		d, err := Decide(c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		informed := 0
		for _, j := range d.Judgements {
			if j.Informational {
				informed++
			}
		}
		var buf bytes.Buffer
		d.Write(&buf)
		if d.Failed != c.failed || informed != c.informed {
			t.Errorf("%s: failed %v with %d informational judgements, want %v and %d\n%s", c.name, d.Failed, informed, c.failed, c.informed, buf.String())
		}
		if want := map[bool]string{true: "gate decision: FAIL", false: "gate decision: pass"}[c.failed]; !strings.Contains(buf.String(), want) {
			t.Errorf("%s: output lacks %q", c.name, want)
		}
	}
	if _, err := Decide(Inputs{Cand: slow, Gated: gated}); !errors.Is(err, ErrInput) {
		t.Errorf("no baseline: %v", err)
	}
}
