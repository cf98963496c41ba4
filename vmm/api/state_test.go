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
	)
	tests := []struct {
		op                                 Op
		notStarted, running, paused, ended string
	}{
		{OpDescribeInstance, ok, ok, ok, ok},
		{OpGetVersion, ok, ok, ok, ok},
		{OpGetVMConfig, ok, ok, ok, ok},
		{OpGetMachineConfig, ok, ok, ok, ok},
		{OpPutMachineConfig, ok, postBoot, postBoot, stopped},
		{OpPatchMachineConfig, ok, postBoot, postBoot, stopped},
		{OpPutBootSource, ok, postBoot, postBoot, stopped},
		{OpPutLogger, ok, postBoot, postBoot, stopped},
		{OpPutMetrics, ok, postBoot, postBoot, stopped},
		{OpPutDrive, ok, postBoot, postBoot, stopped},
		{OpPutNetworkInterface, ok, postBoot, postBoot, stopped},
		{OpPutVsock, ok, postBoot, postBoot, stopped},
		{OpPutEntropy, ok, postBoot, postBoot, stopped},
		{OpInstanceStart, ok, postBoot, postBoot, stopped},
		{OpSendCtrlAltDel, preBoot, ok, ok, stopped},
		{OpFlushMetrics, ok, ok, ok, stopped},
		{OpPause, preBoot, ok, ok, stopped},
		{OpResume, preBoot, ok, ok, stopped},
		{OpCreateSnapshot, preBoot, unpaused, ok, stopped},
		{OpLoadSnapshot, ok, postBoot, postBoot, stopped},
	}
	if len(tests) != int(opCount) {
		t.Fatalf("table covers %d operations, there are %d", len(tests), opCount)
	}
	for _, tt := range tests {
		for _, c := range []struct {
			state State
			want  string
		}{{NotStarted, tt.notStarted}, {Running, tt.running}, {Paused, tt.paused}, {Stopped, tt.ended}} {
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
