package api

import (
	"strings"
	"testing"
)

// Every operation in every state. "" means allowed; otherwise the error
// must contain the text.
func TestStateMachine(t *testing.T) {
	const (
		ok       = ""
		preBoot  = "not supported before starting the microVM"
		postBoot = "not supported after starting the microVM"
		stopped  = "the microVM has stopped"
		unpaused = "needs a paused microVM"
		starting = "while the microVM is starting"
	)
	tests := []struct {
		op                                           Op
		notStarted, starting, running, paused, ended string
	}{
		{OpDescribeInstance, ok, ok, ok, ok, ok},
		{OpGetVersion, ok, ok, ok, ok, ok},
		{OpGetVMConfig, ok, ok, ok, ok, ok},
		{OpGetMachineConfig, ok, ok, ok, ok, ok},
		{OpPutMachineConfig, ok, starting, postBoot, postBoot, stopped},
		{OpPatchMachineConfig, ok, starting, postBoot, postBoot, stopped},
		{OpPutBootSource, ok, starting, postBoot, postBoot, stopped},
		{OpPutLogger, ok, starting, postBoot, postBoot, stopped},
		{OpPutMetrics, ok, starting, postBoot, postBoot, stopped},
		{OpPutDrive, ok, starting, postBoot, postBoot, stopped},
		{OpPutNetworkInterface, ok, starting, postBoot, postBoot, stopped},
		{OpPutVsock, ok, starting, postBoot, postBoot, stopped},
		{OpPutEntropy, ok, starting, postBoot, postBoot, stopped},
		{OpInstanceStart, ok, starting, postBoot, postBoot, stopped},
		{OpSendCtrlAltDel, preBoot, starting, ok, ok, stopped},
		{OpFlushMetrics, ok, starting, ok, ok, stopped},
		{OpPause, preBoot, starting, ok, ok, stopped},
		{OpResume, preBoot, starting, ok, ok, stopped},
		{OpCreateSnapshot, preBoot, starting, unpaused, ok, stopped},
		{OpLoadSnapshot, ok, starting, postBoot, postBoot, stopped},
	}
	if len(tests) != int(opCount) {
		t.Fatalf("table covers %d operations, there are %d", len(tests), opCount)
	}
	for _, tt := range tests {
		for _, c := range []struct {
			state State
			want  string
		}{{NotStarted, tt.notStarted}, {Starting, tt.starting}, {Running, tt.running}, {Paused, tt.paused}, {Stopped, tt.ended}} {
			t.Run(tt.op.String()+"/"+c.state.String(), func(t *testing.T) {
				err := Check(c.state, tt.op)
				switch {
				case c.want == "" && err != nil:
					t.Fatalf("refused: %v", err)
				case c.want != "" && err == nil:
					t.Fatalf("allowed, want %q", c.want)
				case c.want != "" && !strings.Contains(err.Error(), c.want):
					t.Fatalf("error %q does not say %q", err, c.want)
				case c.want != "" && !strings.Contains(err.Error(), tt.op.String()):
					t.Fatalf("error %q does not name the operation", err)
				}
			})
		}
	}
}

func TestStateTransitions(t *testing.T) {
	tests := []struct {
		from State
		op   Op
		to   State
	}{
		{NotStarted, OpInstanceStart, Running},
		{Running, OpPause, Paused},
		{Paused, OpPause, Paused},
		{Paused, OpResume, Running},
		{Running, OpResume, Running},
		{Paused, OpCreateSnapshot, Paused},
		{Running, OpSendCtrlAltDel, Running},
		{NotStarted, OpPutBootSource, NotStarted},
	}
	for _, tt := range tests {
		if got := Next(tt.from, tt.op); got != tt.to {
			t.Errorf("%s in %s → %s, want %s", tt.op, tt.from, got, tt.to)
		}
	}
}

func TestCheckRejectsUnknownOperations(t *testing.T) {
	for _, op := range []Op{-1, opCount, 1000} {
		if err := Check(NotStarted, op); err == nil {
			t.Errorf("Check(%d) allowed", op)
		}
	}
}
