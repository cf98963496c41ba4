package bus_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/marker"
	"github.com/voltvmm/volt/vmm/devices/bootmarker"
	"github.com/voltvmm/volt/vmm/devices/bus"
	"github.com/voltvmm/volt/vmm/devices/genid"
	"github.com/voltvmm/volt/vmm/devices/i8042"
	"github.com/voltvmm/volt/vmm/devices/uart"
)

type countingIRQ struct{ n int }

func (c *countingIRQ) Trigger() error { c.n++; return nil }

// platform is the port-I/O bus of a VM with every legacy device on it, as
// the VM builder wires it.
type platform struct {
	bus     bus.Bus
	uart    *uart.UART
	i8042   *i8042.Controller
	markers *bootmarker.Device
	genid   *genid.Device
	resets  int
}

func newPlatform(t *testing.T) *platform {
	p := &platform{}
	p.uart = uart.New(discard{}, &countingIRQ{})
	p.i8042 = i8042.New(func() { p.resets++ }, i8042.WithKeyboardInterrupt(&countingIRQ{}))
	p.markers = bootmarker.New(time.Now())
	p.genid = genid.New(genid.ID{1, 2, 3})
	for _, d := range []struct {
		name       string
		base, size uint64
		dev        bus.Device
	}{
		{"com1", uart.COM1Port, uart.Size, p.uart},
		{"i8042", i8042.Base, i8042.Size, p.i8042},
		{"boot-marker", marker.Port, 1, p.markers},
		{"generation-id", genid.Port, genid.Size, p.genid},
	} {
		if err := p.bus.Insert(d.name, d.base, d.size, d.dev); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// access plays one guest port access from 4 bytes of fuzz input: which
// device range (or anywhere), offset, size and direction, and a value.
func (p *platform) access(b []byte) {
	bases := []uint64{uart.COM1Port, i8042.Base, marker.Port, genid.Port, uint64(b[0]) << 8}
	port := bases[int(b[0]>>5)%len(bases)] + uint64(b[1]&0x1f)
	size := []int{1, 2, 4}[int(b[2])%3]
	data := make([]byte, size)
	for i := range data {
		data[i] = b[3] + byte(i)
	}
	if b[2]&0x80 != 0 {
		p.bus.Write(port, data)
	} else {
		p.bus.Read(port, data)
	}
}

// FuzzPortIO plays arbitrary port-I/O sequences, as a guest may, against
// every legacy device through the bus: no panic, and every device keeps
// its bounds.
func FuzzPortIO(f *testing.F) {
	f.Add([]byte{0x00, 0x03, 0x80, 0x80, 0x00, 0x00, 0x80, 'h', 0x20, 0x04, 0x80, 0xfe, 0x40, 0x00, 0x80, 0x60})
	f.Add([]byte{0x20, 0x04, 0x80, 0xd1, 0x20, 0x00, 0x80, 0xfe, 0x60, 0x0f, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		p := newPlatform(t)
		for i := 0; i+4 <= len(ops) && i < 4*4096; i += 4 {
			p.access(ops[i : i+4])
			p.uart.Enqueue([]byte{ops[i]})
		}
		if n := len(p.uart.State().Input); n > uart.MaxInput {
			t.Fatalf("UART holds %d input bytes, more than %d", n, uart.MaxInput)
		}
		if n := len(p.i8042.State().Keyboard); n > i8042.QueueSize {
			t.Fatalf("i8042 queue holds %d bytes", n)
		}
		if n := len(p.markers.Events()); n > bootmarker.MaxEvents {
			t.Fatalf("%d boot markers logged", n)
		}
	})
}

// FuzzDeviceRestore restores every legacy device from arbitrary state
// (a snapshot is untrusted input), then drives it: nothing may panic or
// grow past its bounds.
func FuzzDeviceRestore(f *testing.F) {
	f.Add([]byte(`{"UART":{"IER":15,"LCR":128,"Input":"aGVsbG8="},"I8042":{"Keyboard":"AAAA"},"BootMarker":{"Stages":[96,97],"Offsets":[1,2]},"GenID":{}}`), []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, state []byte, ops []byte) {
		var st struct {
			UART       uart.State
			I8042      i8042.State
			BootMarker bootmarker.State
			GenID      genid.State
		}
		if json.Unmarshal(state, &st) != nil {
			return
		}
		p := newPlatform(t)
		p.uart.Restore(st.UART)
		p.i8042.Restore(st.I8042)
		p.markers.Restore(st.BootMarker)
		p.genid.Set(st.GenID.ID)
		for i := 0; i+4 <= len(ops) && i < 4*1024; i += 4 {
			p.access(ops[i : i+4])
		}
		if len(p.uart.State().Input) > uart.MaxInput || len(p.i8042.State().Keyboard) > i8042.QueueSize || len(p.markers.Events()) > bootmarker.MaxEvents {
			t.Fatal("a restored device exceeds its bounds")
		}
	})
}
