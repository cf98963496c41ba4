package uart

import (
	"bytes"
	"strings"
	"testing"
)

type countingIRQ struct{ n int }

func (c *countingIRQ) Trigger() error { c.n++; return nil }

func rd(u *UART, off uint64) uint8 {
	b := make([]byte, 1)
	u.Read(off, b)
	return b[0]
}

func wr(u *UART, off uint64, v uint8) { u.Write(off, []byte{v}) }

func TestTransmitGoesToWriter(t *testing.T) {
	var out bytes.Buffer
	u := New(&out, nil)
	for _, c := range []byte("hi\n") {
		if rd(u, regLSR)&lsrTHRE == 0 {
			t.Fatal("transmitter not empty")
		}
		wr(u, regData, c)
	}
	if out.String() != "hi\n" {
		t.Fatalf("output %q", out.String())
	}
}

func TestReceiveAndInterrupts(t *testing.T) {
	irq := &countingIRQ{}
	u := New(nil, irq)
	if got := rd(u, regIIR) & 0x0f; got != iirNone {
		t.Fatalf("IIR with nothing pending = %#x", got)
	}
	wr(u, regIER, ierRDA)
	if irq.n != 0 {
		t.Fatal("interrupt without input")
	}
	u.Enqueue([]byte("ab"))
	if irq.n == 0 {
		t.Fatal("no interrupt on input with RDA enabled")
	}
	if got := rd(u, regIIR) & 0x0f; got != iirRDA {
		t.Fatalf("IIR = %#x, want RDA", got)
	}
	if rd(u, regLSR)&lsrDR == 0 {
		t.Fatal("LSR.DR clear with input pending")
	}
	if a, b := rd(u, regData), rd(u, regData); a != 'a' || b != 'b' {
		t.Fatalf("read %q%q", a, b)
	}
	if rd(u, regLSR)&lsrDR != 0 {
		t.Fatal("LSR.DR set after draining input")
	}
}

func TestTHREInterruptIsAcknowledgedByIIRRead(t *testing.T) {
	irq := &countingIRQ{}
	u := New(nil, irq)
	wr(u, regIER, ierTHRE)
	if irq.n != 1 {
		t.Fatalf("enabling THRE raised %d interrupts, want 1", irq.n)
	}
	if got := rd(u, regIIR) & 0x0f; got != iirTHRE {
		t.Fatalf("IIR = %#x, want THRE", got)
	}
	if got := rd(u, regIIR) & 0x0f; got != iirNone {
		t.Fatalf("IIR after acknowledge = %#x, want none", got)
	}
	wr(u, regData, 'x')
	if irq.n != 2 {
		t.Fatalf("THR write raised %d interrupts in total, want 2", irq.n)
	}
}

func TestDivisorLatch(t *testing.T) {
	u := New(nil, nil)
	wr(u, regLCR, lcrDLAB)
	wr(u, regData, 1)
	wr(u, regIER, 0)
	if rd(u, regData) != 1 || rd(u, regIER) != 0 {
		t.Fatal("divisor latch not readable")
	}
	wr(u, regLCR, 0x03)
	if u.State().DLL != 1 || u.State().IER != 0 {
		t.Fatalf("state %+v", u.State())
	}
}

func TestLoopback(t *testing.T) {
	var out bytes.Buffer
	u := New(&out, nil)
	wr(u, regMCR, mcrLoop)
	wr(u, regData, 'z')
	if out.Len() != 0 || rd(u, regData) != 'z' {
		t.Fatal("loopback byte not received")
	}
}

func TestInputIsBounded(t *testing.T) {
	u := New(nil, nil)
	big := make([]byte, MaxInput+10)
	if n := u.Enqueue(big); n != MaxInput {
		t.Fatalf("Enqueue accepted %d", n)
	}
	if u.Lost() != 10 {
		t.Fatalf("Lost = %d", u.Lost())
	}
}

func TestFeedWaitsInsteadOfDropping(t *testing.T) {
	u := New(nil, nil)
	input := strings.Repeat("x", MaxInput+100)
	drained := 0
	err := u.Feed(strings.NewReader(input), func() bool {
		for range 200 {
			rd(u, regData)
			drained++
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if u.Lost() != 0 || len(u.State().Input)+drained != len(input) {
		t.Fatalf("lost %d, buffered %d + drained %d != %d", u.Lost(), len(u.State().Input), drained, len(input))
	}
}

func TestFeedStopsWhenToldWhileTheGuestIsNotReading(t *testing.T) {
	u := New(nil, nil)
	waits := 0
	err := u.Feed(strings.NewReader(strings.Repeat("x", 2*MaxInput)), func() bool {
		waits++
		return false
	})
	if err != nil || waits != 1 || len(u.State().Input) != MaxInput {
		t.Fatalf("Feed = %v after %d waits with %d bytes buffered; want it to stop at the first wait with the FIFO full", err, waits, len(u.State().Input))
	}
}

func TestStateRoundTrip(t *testing.T) {
	u := New(nil, nil)
	wr(u, regLCR, 0x03)
	wr(u, regIER, ierRDA)
	wr(u, regSCR, 0x5a)
	u.Enqueue([]byte("q"))
	v := New(nil, nil)
	v.Restore(u.State())
	if rd(v, regSCR) != 0x5a || rd(v, regLSR)&lsrDR == 0 || rd(v, regData) != 'q' {
		t.Fatalf("restored state %+v", v.State())
	}
}

func TestRestoreSanitisesUntrustedState(t *testing.T) {
	v := New(nil, nil)
	v.Restore(State{IER: 0xff, MCR: 0xff, Input: make([]byte, MaxInput*2)})
	s := v.State()
	if s.IER != ierMask || s.MCR != mcrMask || len(s.Input) != MaxInput {
		t.Fatalf("state not sanitised: IER %#x MCR %#x input %d", s.IER, s.MCR, len(s.Input))
	}
}

func TestFIFOResetKeepsHostInput(t *testing.T) {
	u := New(nil, nil)
	u.Enqueue([]byte("early"))
	wr(u, regIIR, 0xc7) // enable and reset both FIFOs, as guests do at start-up
	if rd(u, regLSR)&lsrDR == 0 || rd(u, regData) != 'e' {
		t.Fatal("input queued before the guest initialised the port was lost")
	}
}
