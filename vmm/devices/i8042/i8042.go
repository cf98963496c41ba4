// Package i8042 emulates just enough of the PC keyboard controller for a
// guest to reset the machine: command 0xFE on port 0x64 pulses the CPU reset
// line, which is how Linux (reboot=k) and the probe guest end a microVM that
// has no ACPI. A few configuration commands are answered so that a guest's
// driver probe finds a sane controller. The only keys the keyboard behind it
// ever sends are Ctrl+Alt+Del, which is how the host asks a Linux guest to
// reboot cleanly (Firecracker's SendCtrlAltDel action).
package i8042

import (
	"errors"
	"sync"
)

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

	// configKbdInt is the command byte's "interrupt on keyboard output"
	// bit; guests clear it while polling, and no IRQ may be raised then.
	configKbdInt = 0x01
)

// KeyboardIRQ is the ISA interrupt line of the keyboard port.
const KeyboardIRQ = 1

// QueueSize bounds the keyboard output queue, as the small buffer of a real
// controller does; a guest that never reads cannot make the host queue grow.
const QueueSize = 16

// Scan code set 2 make codes for Ctrl+Alt+Del: left Ctrl, left Alt and the
// extended (0xE0-prefixed) Delete. Set 2 is what a PC keyboard sends before
// the controller's translation, and what Linux's atkbd expects from a
// controller with translation off; it matches what Firecracker injects.
var ctrlAltDel = []byte{0x14, 0x11, 0xe0, 0x71}

// ErrQueueFull is returned when the keyboard queue has no room for a whole
// key sequence: the guest has not read the keys sent before.
var ErrQueueFull = errors.New("i8042: keyboard queue full: the guest has not read earlier keys")

// Interrupt raises the keyboard interrupt line.
type Interrupt interface {
	Trigger() error
}

// Option configures a Controller.
type Option func(*Controller)

// WithKeyboardInterrupt connects the keyboard port's IRQ 1.
func WithKeyboardInterrupt(irq Interrupt) Option {
	return func(c *Controller) { c.kbdIRQ = irq }
}

// State is the controller's state, plain data for snapshots.
type State struct {
	Config     uint8
	Output     uint8
	OutputFull bool
	// PendingCommand is a command awaiting its data byte on port 0x60.
	PendingCommand uint8
	LastWasCommand bool
	Outport        uint8
	// Keyboard holds scan codes the guest has not read yet, oldest first;
	// controller replies (Output) are read before them.
	Keyboard []byte
}

// Controller is the i8042. OnReset runs (on the vCPU thread that wrote the
// command) when the guest asks for a reset.
type Controller struct {
	mu      sync.Mutex
	st      State
	onReset func()
	kbdIRQ  Interrupt // guarded by mu; nil drops keyboard interrupts
}

// New returns a controller that calls onReset when the guest resets.
func New(onReset func(), opts ...Option) *Controller {
	c := &Controller{onReset: onReset, st: State{Config: configKbdInt, Outport: 0x01}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// SetKeyboardInterrupt connects (or replaces) the keyboard IRQ after
// construction, for callers that cannot pass WithKeyboardInterrupt to New.
func (c *Controller) SetKeyboardInterrupt(irq Interrupt) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kbdIRQ = irq
}

// TriggerCtrlAltDel queues the Ctrl+Alt+Del make codes and interrupts the
// guest. The whole sequence is queued or none of it: half a chord would
// leave the guest's keyboard driver with a stuck modifier.
func (c *Controller) TriggerCtrlAltDel() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if QueueSize-len(c.st.Keyboard) < len(ctrlAltDel) {
		return ErrQueueFull
	}
	c.st.Keyboard = append(c.st.Keyboard, ctrlAltDel...)
	return c.keyboardInterrupt()
}

// keyboardInterrupt raises IRQ 1 when a byte is waiting and the guest has
// enabled the interrupt. The line is edge-triggered, so it is raised again
// for each byte the guest leaves behind after a read.
// Precondition: c.mu held.
func (c *Controller) keyboardInterrupt() error {
	if c.kbdIRQ == nil || c.st.Config&configKbdInt == 0 || !c.outputPending() {
		return nil
	}
	return c.kbdIRQ.Trigger()
}

// outputPending reports whether port 0x60 has a byte for the guest.
// Precondition: c.mu held.
func (c *Controller) outputPending() bool {
	return c.st.OutputFull || len(c.st.Keyboard) > 0
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
		switch {
		case c.st.OutputFull:
			data[0] = c.st.Output
			c.st.OutputFull = false
		case len(c.st.Keyboard) > 0:
			data[0] = c.st.Keyboard[0]
			c.st.Keyboard = c.st.Keyboard[1:]
		default:
			data[0] = c.st.Output
		}
		// A failed interrupt cannot be reported to the guest's read; the
		// byte stays readable by polling.
		_ = c.keyboardInterrupt()
	case offCommand:
		s := uint8(statusSystemFlag)
		if c.outputPending() {
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
	s := c.st
	s.Keyboard = append([]byte(nil), c.st.Keyboard...)
	return s
}

// Restore replaces the controller state. The state may come from an
// untrusted snapshot file: a keyboard queue longer than a controller can
// hold is cut to its oldest QueueSize bytes rather than trusted.
func (c *Controller) Restore(s State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kbd := s.Keyboard
	if len(kbd) > QueueSize {
		kbd = kbd[:QueueSize]
	}
	s.Keyboard = append([]byte(nil), kbd...)
	c.st = s
}
