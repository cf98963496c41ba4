package bench

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/marker"
)

func TestGateCleanRunsPass(t *testing.T) {
	// Twenty independent clean A/B pairs. Alpha is shared by the twelve
	// tests of a gate, so each pair fails with probability at most 0.01;
	// Binomial(20, 0.01) reaches 3 with probability about 0.001.
	var failed int
	for seed := uint64(0); seed < 20; seed++ {
		base := syntheticRun("volt", 20, 1, 100+seed)
		cand := syntheticRun("volt", 20, 1, 200+seed)
		g, err := Gate(base, cand, DefaultTolerance())
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Rows) != 6 {
			t.Fatalf("%d gated rows, want 6", len(g.Rows))
		}
		if g.Failed {
			failed++
			var buf bytes.Buffer
			WriteGate(&buf, g)
			t.Logf("seed %d: clean pair failed (expected about once in 100):\n%s", seed, buf.String())
		}
	}
	if failed > 2 {
		t.Errorf("%d of 20 clean pairs failed the gate", failed)
	}
}

func TestGateFailsOnARegressionAndSaysWhere(t *testing.T) {
	base := syntheticRun("volt", 20, 1, 1)
	cand := NewRun("volt", GuestProbe)
	// Shift only the stages from pid1 on, as a stall in the guest would.
	rngRun := syntheticRun("y", 20, 1, 3)
	for i := 0; i < 20; i++ {
		b := Boot{Stages: map[string]StageTime{}}
		for _, s := range rngRun.Stages {
			v := s.Samples()[i]
			if s.Stage == "pid1" || s.Stage == "ready" || s.Stage == "exit" {
				v += 5000
			}
			b.Stages[s.Stage] = StageTime{At: time.Duration(v) * time.Microsecond}
		}
		cand.Add(b)
	}
	g, err := Gate(base, cand, DefaultTolerance())
	if err != nil {
		t.Fatal(err)
	}
	if !g.Failed {
		t.Fatal("a 5 ms stall from pid1 on passed the gate")
	}
	var buf bytes.Buffer
	WriteGate(&buf, g)
	out := buf.String()
	for _, r := range g.Rows {
		shifted := r.Stage == "pid1" || r.Stage == "ready" || r.Stage == "exit"
		if r.P50.Regressed != shifted {
			t.Errorf("%s: p50 regressed = %v, want %v\n%s", r.Stage, r.P50.Regressed, shifted, out)
		}
	}
	if !strings.Contains(out, "REGRESSED") || !strings.Contains(out, "gate: FAIL") {
		t.Errorf("table does not say what regressed:\n%s", out)
	}
}

func TestGateMissingStageAndFailedBootsFail(t *testing.T) {
	base := syntheticRun("volt", 20, 1, 1)
	cand := syntheticRun("volt", 20, 1, 2)
	cand.Stage("ready").hist.Reset()
	g, err := Gate(base, cand, DefaultTolerance())
	if err != nil {
		t.Fatal(err)
	}
	if !g.Failed {
		t.Error("a stage the candidate never reaches passed")
	}
	cand = syntheticRun("volt", 20, 1, 2)
	cand.Add(Boot{Err: ErrTimeout})
	if g, _ := Gate(base, cand, DefaultTolerance()); !g.Failed {
		t.Error("a timed-out candidate boot passed")
	}
}

func TestGateRefusesTooFewBoots(t *testing.T) {
	_, err := Gate(syntheticRun("volt", 20, 1, 1), syntheticRun("volt", GateMinSamples-1, 1, 2), DefaultTolerance())
	if !errors.Is(err, ErrGateInput) {
		t.Fatalf("err = %v, want ErrGateInput", err)
	}
}

func TestStageTimesFromARecord(t *testing.T) {
	pid1, _ := trace.Marker(marker.PID1)
	long, _ := trace.Marker(marker.KernelLongMode)
	rec := trace.Record{Points: []trace.Point{
		{Milestone: trace.Exec},
		{Milestone: trace.VMCreated, At: 2 * time.Millisecond},
		{Milestone: trace.GuestEntry, At: 3 * time.Millisecond},
		{Milestone: long, At: 4 * time.Millisecond, UserExits: 2},
		{Milestone: pid1, At: 5 * time.Millisecond, UserExits: 1},
		{Milestone: trace.FirstOutput, At: 6 * time.Millisecond, UserExits: 10},
		{Milestone: trace.Exit, At: 9 * time.Millisecond, UserExits: 7},
	}}
	st := stageTimes(rec)
	if got := st["pid1"]; got.At != 5*time.Millisecond || got.UserExits != 3 {
		t.Errorf("pid1 = %+v, want 5 ms and 3 exits (long mode's 2 count towards it)", got)
	}
	if got := st["first-output"]; got.UserExits != 10 {
		t.Errorf("first-output = %+v", got)
	}
	if _, ok := st["ready"]; ok {
		t.Error("ready reported but never reached")
	}
}
