package bus

import "testing"

type recorder struct {
	lastOffset uint64
	written    []byte
}

func (r *recorder) Read(offset uint64, data []byte) {
	r.lastOffset = offset
	for i := range data {
		data[i] = byte(offset) + byte(i)
	}
}

func (r *recorder) Write(offset uint64, data []byte) {
	r.lastOffset = offset
	r.written = append([]byte(nil), data...)
}

func TestBusRoutesByOffset(t *testing.T) {
	var b Bus
	com1, other := &recorder{}, &recorder{}
	if err := b.Insert("com1", 0x3f8, 8, com1); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert("other", 0x80, 1, other); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1)
	if !b.Read(0x3fd, data) || com1.lastOffset != 5 || data[0] != 5 {
		t.Fatalf("read 0x3fd: offset %d data %#x", com1.lastOffset, data[0])
	}
	if !b.Write(0x80, []byte{0x60}) || other.written[0] != 0x60 {
		t.Fatalf("write 0x80 not routed")
	}
}

func TestBusUnclaimedAccesses(t *testing.T) {
	var b Bus
	if err := b.Insert("dev", 0x100, 4, &recorder{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr uint64
		n    int
	}{{0x0ff, 1}, {0x104, 1}, {0x103, 2}, {^uint64(0), 1}}
	for _, tt := range tests {
		data := make([]byte, tt.n)
		if b.Read(tt.addr, data) {
			t.Errorf("read %#x+%d claimed", tt.addr, tt.n)
		}
		for _, v := range data {
			if v != 0xff {
				t.Errorf("unclaimed read %#x returned %#x, want 0xff", tt.addr, v)
			}
		}
	}
	if b.Unhandled() != uint64(len(tests)) {
		t.Errorf("Unhandled = %d, want %d", b.Unhandled(), len(tests))
	}
}

func TestBusRejectsOverlaps(t *testing.T) {
	var b Bus
	if err := b.Insert("a", 0x10, 0x10, &recorder{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{0x18, 1}, {0x0, 0x11}, {0x1f, 4}, {0x5, 0}} {
		if err := b.Insert("b", r[0], r[1], &recorder{}); err == nil {
			t.Errorf("Insert(%#x, %#x) accepted", r[0], r[1])
		}
	}
	if err := b.Insert("c", 0x20, 1, &recorder{}); err != nil {
		t.Errorf("adjacent insert refused: %v", err)
	}
}
