package api

import "fmt"

// State is the instance state of Firecracker's API: configuration happens
// before the start, and the running VM can be paused and resumed. Stopped
// is volt's addition for the moment between the guest powering off and the
// process exiting; InstanceInfo reports it by the last swagger state.
type State int

const (
	NotStarted State = iota
	// Starting is volt's too: InstanceStart or a snapshot load is building
	// the VM, which can take long (a large initrd), and the API answers
	// reads meanwhile instead of waiting. InstanceInfo reports it as
	// "Not started".
	Starting
	Running
	Paused
	Stopped
)

// String returns the swagger InstanceInfo.state spelling.
func (s State) String() string {
	switch s {
	case NotStarted:
		return "Not started"
	case Starting:
		return "Starting"
	case Running:
		return "Running"
	case Paused:
		return "Paused"
	case Stopped:
		return "Stopped"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Op is one API operation, as the state machine sees it.
type Op int

const (
	OpDescribeInstance Op = iota
	OpGetVersion
	OpGetVMConfig
	OpGetMachineConfig
	OpPutMachineConfig
	OpPatchMachineConfig
	OpPutBootSource
	OpPutLogger
	OpPutMetrics
	OpPutDrive
	OpPutNetworkInterface
	OpPutVsock
	OpPutEntropy
	OpInstanceStart
	OpSendCtrlAltDel
	OpFlushMetrics
	OpPause
	OpResume
	OpCreateSnapshot
	OpLoadSnapshot
	opCount
)

var opNames = [opCount]string{
	OpDescribeInstance:    "GET /",
	OpGetVersion:          "GET /version",
	OpGetVMConfig:         "GET /vm/config",
	OpGetMachineConfig:    "GET /machine-config",
	OpPutMachineConfig:    "PUT /machine-config",
	OpPatchMachineConfig:  "PATCH /machine-config",
	OpPutBootSource:       "PUT /boot-source",
	OpPutLogger:           "PUT /logger",
	OpPutMetrics:          "PUT /metrics",
	OpPutDrive:            "PUT /drives",
	OpPutNetworkInterface: "PUT /network-interfaces",
	OpPutVsock:            "PUT /vsock",
	OpPutEntropy:          "PUT /entropy",
	OpInstanceStart:       "InstanceStart",
	OpSendCtrlAltDel:      "SendCtrlAltDel",
	OpFlushMetrics:        "FlushMetrics",
	OpPause:               "PATCH /vm Paused",
	OpResume:              "PATCH /vm Resumed",
	OpCreateSnapshot:      "PUT /snapshot/create",
	OpLoadSnapshot:        "PUT /snapshot/load",
}

func (o Op) String() string {
	if o >= 0 && o < opCount {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// phase says in which states an operation is allowed.
type phase int

const (
	anyTime  phase = iota // every state, including Stopped (reads)
	preBoot               // NotStarted only
	postBoot              // Running or Paused
	paused                // Paused only
	flush                 // anything but Stopped
)

var opPhases = [opCount]phase{
	OpDescribeInstance:    anyTime,
	OpGetVersion:          anyTime,
	OpGetVMConfig:         anyTime,
	OpGetMachineConfig:    anyTime,
	OpPutMachineConfig:    preBoot,
	OpPatchMachineConfig:  preBoot,
	OpPutBootSource:       preBoot,
	OpPutLogger:           preBoot,
	OpPutMetrics:          preBoot,
	OpPutDrive:            preBoot,
	OpPutNetworkInterface: preBoot,
	OpPutVsock:            preBoot,
	OpPutEntropy:          preBoot,
	OpInstanceStart:       preBoot,
	OpSendCtrlAltDel:      postBoot,
	OpFlushMetrics:        flush,
	OpPause:               postBoot,
	OpResume:              postBoot,
	OpCreateSnapshot:      paused,
	OpLoadSnapshot:        preBoot,
}

// Check says whether op may run in state s, and why not. It knows only the
// states; preconditions on configuration (a boot source before
// InstanceStart, metrics before FlushMetrics) are the controller's.
func Check(s State, op Op) error {
	if op < 0 || op >= opCount {
		return fmt.Errorf("unknown operation %d", int(op))
	}
	p := opPhases[op]
	if s == Stopped && p != anyTime {
		return fmt.Errorf("%s is not possible: the microVM has stopped", op)
	}
	if s == Starting && p != anyTime {
		return fmt.Errorf("%s is not possible while the microVM is starting; try again once it runs", op)
	}
	switch p {
	case preBoot:
		if s != NotStarted {
			return fmt.Errorf("%s is not supported after starting the microVM", op)
		}
	case postBoot:
		if s == NotStarted {
			return fmt.Errorf("%s is not supported before starting the microVM", op)
		}
	case paused:
		switch s {
		case NotStarted:
			return fmt.Errorf("%s is not supported before starting the microVM", op)
		case Running:
			return fmt.Errorf(`%s needs a paused microVM: PATCH /vm {"state": "Paused"} first`, op)
		}
	}
	return nil
}

// Next is the state after op succeeded in state s. Operations that do not
// change the state return s.
func Next(s State, op Op) State {
	switch op {
	case OpInstanceStart:
		return Running
	case OpPause:
		return Paused
	case OpResume:
		return Running
	}
	return s
}
