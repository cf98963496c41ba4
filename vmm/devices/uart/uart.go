// Package uart emulates the 16550A-compatible 8250 UART that guests use as
// their serial console (COM1 at port 0x3f8, IRQ 4). Transmitted bytes go to
// an io.Writer at once, so the transmit holding register is always empty;
// received bytes wait in a bounded FIFO until the guest reads them.
package uart

import (
	"io"
	"sync"
)

// Standard COM1 placement.
const (
	COM1Port = 0x3f8
	COM1IRQ  = 4
	Size     = 8
)

// Register offsets.
const (
	regData = 0 // RBR on read, THR on write; DLL when DLAB is set
	regIER  = 1 // DLM when DLAB is set
	regIIR  = 2 // IIR on read, FCR on write
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7
)

const (
	ierRDA  = 0x01 // received data available
	ierTHRE = 0x02 // transmit holding register empty
	ierMask = 0x0f

	iirNone  = 0x01
	iirTHRE  = 0x02
	iirRDA   = 0x04
	iirFIFOs = 0xc0 // FIFOs enabled, as a 16550A reports

	lcrDLAB = 0x80

	mcrLoop = 0x10
	mcrMask = 0x1f

	lsrDR   = 0x01 // data ready
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	// With loopback off and no modem, report carrier, DSR and CTS present
	// so that guests do not wait for a modem.
	msrIdle = 0xb0

	// MaxInput bounds the receive buffer: a host pasting megabytes into
	// the console must not grow the VMM without limit.
	MaxInput = 64 << 10
)

// Interrupt raises the UART's interrupt line.
type Interrupt interface {
	Trigger() error
}

// State is the UART's complete register state, plain data for snapshots.
type State struct {
	DLL, DLM uint8
	IER      uint8
	LCR      uint8
	MCR      uint8
	LSR      uint8
	MSR      uint8
	SCR      uint8
	// THREPending is the latched "transmitter empty" interrupt, cleared by
	// reading IIR or writing THR.
	THREPending bool
	Input       []byte
}

// UART is one 8250. It is safe for concurrent use by vCPU threads and the
// goroutine feeding input.
type UART struct {
	mu   sync.Mutex
	st   State
	out  io.Writer
	irq  Interrupt
	lost uint64
	werr error
}

// New returns a UART writing guest output to out (nil discards it) and
// signalling irq (nil for polled use).
func New(out io.Writer, irq Interrupt) *UART {
	if out == nil {
		out = io.Discard
	}
	return &UART{
		out: out,
		irq: irq,
		st:  State{LSR: lsrTHRE | lsrTEMT, MSR: msrIdle, DLL: 12}, // 9600 baud until the guest says otherwise
	}
}

// Read handles a guest read of register offset.
func (u *UART) Read(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 {
		return
	}
	data[0] = u.read(offset)
}

func (u *UART) read(offset uint64) uint8 {
	s := &u.st
	switch offset {
	case regData:
		if s.LCR&lcrDLAB != 0 {
			return s.DLL
		}
		if len(s.Input) == 0 {
			return 0
		}
		b := s.Input[0]
		s.Input = s.Input[1:]
		if len(s.Input) == 0 {
			s.Input = nil
			s.LSR &^= lsrDR
		}
		u.updateInterrupt()
		return b
	case regIER:
		if s.LCR&lcrDLAB != 0 {
			return s.DLM
		}
		return s.IER
	case regIIR:
		iir := u.pendingIIR()
		if iir == iirTHRE {
			// Reading IIR acknowledges a THRE interrupt (8250 semantics).
			s.THREPending = false
		}
		return iir | iirFIFOs
	case regLCR:
		return s.LCR
	case regMCR:
		return s.MCR
	case regLSR:
		return s.LSR
	case regMSR:
		if s.MCR&mcrLoop != 0 {
			// In loopback the modem inputs mirror the outputs.
			return (s.MCR&0x0c)<<4 | (s.MCR&0x01)<<5 | (s.MCR&0x02)<<3
		}
		return s.MSR
	case regSCR:
		return s.SCR
	}
	return 0
}

// Write handles a guest write of register offset.
func (u *UART) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	v := data[0]
	s := &u.st
	switch offset {
	case regData:
		if s.LCR&lcrDLAB != 0 {
			s.DLL = v
			return
		}
		if s.MCR&mcrLoop != 0 {
			u.enqueue([]byte{v})
		} else if u.werr == nil {
			// A console that stops accepting output (closed pipe) must not
			// stop the guest; remember the error and drop further output.
			if _, err := u.out.Write([]byte{v}); err != nil {
				u.werr = err
			}
		}
		s.THREPending = true
		u.updateInterrupt()
	case regIER:
		if s.LCR&lcrDLAB != 0 {
			s.DLM = v
			return
		}
		old := s.IER
		s.IER = v & ierMask
		if old&ierTHRE == 0 && s.IER&ierTHRE != 0 {
			// Enabling THRE with an empty transmitter interrupts at once;
			// Linux relies on this to start transmission.
			s.THREPending = true
		}
		u.updateInterrupt()
	case regIIR:
		// FCR: FIFO control. The FIFOs are always on. A receive-FIFO
		// reset is deliberately not applied to the input buffer: it holds
		// the host's side of the line (a pipe or terminal), and a guest
		// that resets its FIFO while initialising the port must not eat
		// the commands a caller piped in before the guest was ready.
	case regLCR:
		s.LCR = v
	case regMCR:
		s.MCR = v & mcrMask
	case regLSR, regMSR:
		// Read-only on a 16550A; writes are ignored.
	case regSCR:
		s.SCR = v
	}
}

func (u *UART) pendingIIR() uint8 {
	s := &u.st
	switch {
	case s.IER&ierRDA != 0 && s.LSR&lsrDR != 0:
		return iirRDA
	case s.IER&ierTHRE != 0 && s.THREPending:
		return iirTHRE
	}
	return iirNone
}

// updateInterrupt raises an edge whenever a source is pending. The in-kernel
// PIC latches ISA interrupts on edges, so a pending source that the guest has
// not yet serviced is signalled again on the next event.
func (u *UART) updateInterrupt() {
	if u.irq == nil || u.pendingIIR() == iirNone {
		return
	}
	u.irq.Trigger()
}

// Enqueue delivers input from the host to the guest and returns how many
// bytes fit; the rest is dropped and counted.
func (u *UART) Enqueue(p []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := u.enqueue(p)
	u.lost += uint64(len(p) - n)
	return n
}

func (u *UART) enqueue(p []byte) int {
	n := min(len(p), MaxInput-len(u.st.Input))
	if n == 0 {
		return 0
	}
	u.st.Input = append(u.st.Input, p[:n]...)
	u.st.LSR |= lsrDR
	u.updateInterrupt()
	return n
}

// Lost returns how many input bytes were dropped because the FIFO was full.
func (u *UART) Lost() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lost
}

// Feed copies r into the UART until r ends, pacing itself when the guest
// is not reading so that no input is lost: while the FIFO is full it calls
// wait, and stops (returning nil) when wait reports false. It is meant to
// run on its own goroutine; it returns r's error (nil at EOF).
func (u *UART) Feed(r io.Reader, wait func() bool) error {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		p := buf[:n]
		for len(p) > 0 {
			u.mu.Lock()
			k := u.enqueue(p)
			u.mu.Unlock()
			p = p[k:]
			if len(p) > 0 && !wait() {
				return nil
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// State returns a copy of the register state.
func (u *UART) State() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.st
	s.Input = append([]byte(nil), u.st.Input...)
	return s
}

// Restore replaces the register state, e.g. from a snapshot. Input beyond
// MaxInput is truncated, since a state file is untrusted.
func (u *UART) Restore(s State) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(s.Input) > MaxInput {
		s.Input = s.Input[:MaxInput]
	}
	s.Input = append([]byte(nil), s.Input...)
	s.IER &= ierMask
	s.MCR &= mcrMask
	s.LSR = s.LSR&^lsrDR | lsrTHRE | lsrTEMT
	if len(s.Input) > 0 {
		s.LSR |= lsrDR
	}
	u.st = s
	u.updateInterrupt()
}
