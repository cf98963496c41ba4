// Package i8042 emulates just enough of the PC keyboard controller for a
// guest to reset the machine: command 0xFE on port 0x64 pulses the CPU reset
// line, which is how Linux (reboot=k) and the probe guest end a microVM that
// has no ACPI. A few configuration commands are answered so that a guest's
// driver probe finds a sane controller without a keyboard behind it.
package i8042

import "sync"

// Standard placement: data port 0x60, command/status port 0x64. The device
// claims 0x60–0x64; port 0x61 in between belongs to the PIT's speaker gate,
// which the in-kernel PIT handles before userspace sees it.
const (
	Base = 0x60
	Size = 5

	offData    = 0
	offCommand = 4
)

const (
	cmdReadConfig  = 0x20
	cmdWriteConfig = 0x60
	cmdSelfTest    = 0xaa
	cmdIfaceTest   = 0xab
	cmdDisableKbd  = 0xad
	cmdEnableKbd   = 0xae
	cmdReadOutput  = 0xd0
	cmdWriteOutput = 0xd1
	cmdPulseReset  = 0xfe

	statusOutputFull = 0x01
	statusSystemFlag = 0x04
	statusCommand    = 0x08

	selfTestOK = 0x55
)

// State is the controller's state, plain data for snapshots.
type State struct {
	Config     uint8
	Output     uint8
	OutputFull bool
	// PendingCommand is a command awaiting its data byte on port 0x60.
	PendingCommand uint8
	LastWasCommand bool
	Outport        uint8
}

// Controller is the i8042. OnReset runs (on the vCPU thread that wrote the
// command) when the guest asks for a reset.
type Controller struct {
	mu      sync.Mutex
	st      State
	onReset func()
}

// New returns a controller that calls onReset when the guest resets.
func New(onReset func()) *Controller {
	return &Controller{onReset: onReset, st: State{Config: 0x01, Outport: 0x01}}
}

// Read handles guest reads of the data and status ports.
func (c *Controller) Read(offset uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 {
		return
	}
	switch offset {
	case offData:
		data[0] = c.st.Output
		c.st.OutputFull = false
	case offCommand:
		s := uint8(statusSystemFlag)
		if c.st.OutputFull {
			s |= statusOutputFull
		}
		if c.st.LastWasCommand {
			s |= statusCommand
		}
		data[0] = s
	}
}

// Write handles guest writes of the data and command ports.
func (c *Controller) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	c.mu.Lock()
	reset := false
	switch offset {
	case offData:
		c.st.LastWasCommand = false
		switch c.st.PendingCommand {
		case cmdWriteConfig:
			c.st.Config = v
		case cmdWriteOutput:
			c.st.Outport = v
			// Bit 0 of the output port is the CPU reset line, active low.
			reset = v&0x01 == 0
		}
		c.st.PendingCommand = 0
	case offCommand:
		c.st.LastWasCommand = true
		c.st.PendingCommand = 0
		switch v {
		case cmdReadConfig:
			c.output(c.st.Config)
		case cmdWriteConfig, cmdWriteOutput:
			c.st.PendingCommand = v
		case cmdSelfTest:
			c.output(selfTestOK)
		case cmdIfaceTest:
			c.output(0x00)
		case cmdReadOutput:
			c.output(c.st.Outport)
		case cmdDisableKbd, cmdEnableKbd:
		case cmdPulseReset:
			reset = true
		}
	}
	c.mu.Unlock()
	// Called without the lock: the handler stops the VM, which may need to
	// wait for other vCPUs that are themselves touching devices.
	if reset && c.onReset != nil {
		c.onReset()
	}
}

func (c *Controller) output(v uint8) {
	c.st.Output = v
	c.st.OutputFull = true
}

// State returns a copy of the controller state.
func (c *Controller) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Restore replaces the controller state.
func (c *Controller) Restore(s State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st = s
}
