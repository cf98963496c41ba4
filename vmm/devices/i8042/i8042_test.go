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
