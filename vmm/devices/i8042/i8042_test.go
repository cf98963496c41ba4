package i8042

import "testing"

func TestResetCommands(t *testing.T) {
	tests := []struct {
		name   string
		writes [][2]uint8 // offset, value
		reset  bool
	}{
		{"pulse reset line", [][2]uint8{{offCommand, cmdPulseReset}}, true},
		{"write output port with reset low", [][2]uint8{{offCommand, cmdWriteOutput}, {offData, 0x00}}, true},
		{"write output port with reset high", [][2]uint8{{offCommand, cmdWriteOutput}, {offData, 0x01}}, false},
		{"self test", [][2]uint8{{offCommand, cmdSelfTest}}, false},
		{"data without command", [][2]uint8{{offData, 0xfe}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resets := 0
			c := New(func() { resets++ })
			for _, w := range tt.writes {
				c.Write(uint64(w[0]), []byte{w[1]})
			}
			if (resets > 0) != tt.reset {
				t.Fatalf("resets = %d, want reset=%v", resets, tt.reset)
			}
		})
	}
}

func TestSelfTestAndConfig(t *testing.T) {
	c := New(nil)
	b := make([]byte, 1)
	c.Write(offCommand, []byte{cmdSelfTest})
	c.Read(offCommand, b)
	if b[0]&statusOutputFull == 0 {
		t.Fatal("output not full after self test")
	}
	c.Read(offData, b)
	if b[0] != selfTestOK {
		t.Fatalf("self test = %#x", b[0])
	}
	c.Write(offCommand, []byte{cmdWriteConfig})
	c.Write(offData, []byte{0x47})
	c.Write(offCommand, []byte{cmdReadConfig})
	c.Read(offData, b)
	if b[0] != 0x47 {
		t.Fatalf("config = %#x", b[0])
	}
}

type countingIRQ struct{ n int }

func (c *countingIRQ) Trigger() error { c.n++; return nil }

// readPort returns one byte from the controller at offset.
func readPort(c *Controller, offset uint64) uint8 {
	b := make([]byte, 1)
	c.Read(offset, b)
	return b[0]
}

func TestCtrlAltDel(t *testing.T) {
	tests := []struct {
		name string
		// setup runs before the key sequence is triggered.
		setup     func(c *Controller)
		triggers  int
		wantErr   error
		wantBytes []byte // read from port 0x60 while the status says full
		wantIRQs  int    // interrupts raised by the triggers and the reads
	}{
		{
			name:      "one chord, interrupt per byte",
			triggers:  1,
			wantBytes: []byte{0x14, 0x11, 0xe0, 0x71},
			// One on the trigger, then one after each of the first
			// three reads for the byte left behind.
			wantIRQs: 4,
		},
		{
			name:      "interrupts disabled by the guest",
			setup:     func(c *Controller) { c.Write(offCommand, []byte{cmdWriteConfig}); c.Write(offData, []byte{0x00}) },
			triggers:  1,
			wantBytes: []byte{0x14, 0x11, 0xe0, 0x71},
			wantIRQs:  0,
		},
		{
			name:      "controller reply is read before the keys",
			setup:     func(c *Controller) { c.Write(offCommand, []byte{cmdSelfTest}) },
			triggers:  1,
			wantBytes: []byte{selfTestOK, 0x14, 0x11, 0xe0, 0x71},
			wantIRQs:  5,
		},
		{
			name:      "queue full after four chords",
			triggers:  5,
			wantErr:   ErrQueueFull,
			wantBytes: bytes4x(0x14, 0x11, 0xe0, 0x71),
			wantIRQs:  4 + 15,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			irq := &countingIRQ{}
			c := New(nil, WithKeyboardInterrupt(irq))
			if tt.setup != nil {
				tt.setup(c)
			}
			var err error
			for range tt.triggers {
				if e := c.TriggerCtrlAltDel(); e != nil {
					err = e
				}
			}
			if err != tt.wantErr {
				t.Fatalf("TriggerCtrlAltDel error %v, want %v", err, tt.wantErr)
			}
			var got []byte
			for readPort(c, offCommand)&statusOutputFull != 0 {
				got = append(got, readPort(c, offData))
				if len(got) > 2*QueueSize {
					t.Fatal("output never drains")
				}
			}
			if string(got) != string(tt.wantBytes) {
				t.Errorf("port 0x60 gave % x, want % x", got, tt.wantBytes)
			}
			if irq.n != tt.wantIRQs {
				t.Errorf("%d keyboard interrupts, want %d", irq.n, tt.wantIRQs)
			}
		})
	}
}

func bytes4x(b ...byte) []byte {
	var out []byte
	for range 4 {
		out = append(out, b...)
	}
	return out
}

func TestCtrlAltDelWithoutInterruptStillQueues(t *testing.T) {
	c := New(nil)
	if err := c.TriggerCtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	if readPort(c, offCommand)&statusOutputFull == 0 || readPort(c, offData) != 0x14 {
		t.Fatal("keys not readable by polling")
	}
	irq := &countingIRQ{}
	c.SetKeyboardInterrupt(irq)
	readPort(c, offData)
	if irq.n != 1 {
		t.Fatalf("%d interrupts after connecting the line, want 1", irq.n)
	}
}

func TestStateRestore(t *testing.T) {
	long := make([]byte, 3*QueueSize)
	for i := range long {
		long[i] = byte(i)
	}
	tests := []struct {
		name    string
		in      State
		wantKbd []byte
	}{
		{"empty queue", State{Config: 0x47}, nil},
		{"queue kept", State{Keyboard: []byte{0x14, 0x11}}, []byte{0x14, 0x11}},
		{"oversized queue from an untrusted snapshot is cut", State{Keyboard: long}, long[:QueueSize]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(nil)
			c.Restore(tt.in)
			got := c.State()
			if string(got.Keyboard) != string(tt.wantKbd) || got.Config != tt.in.Config {
				t.Fatalf("state %+v after restoring %+v", got, tt.in)
			}
			// The returned state must not alias the live queue.
			if len(got.Keyboard) > 0 {
				got.Keyboard[0] ^= 0xff
				if c.State().Keyboard[0] == got.Keyboard[0] {
					t.Fatal("State() aliases the controller's queue")
				}
			}
		})
	}
}
