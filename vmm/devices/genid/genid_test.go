package genid

import "testing"

func TestReadsIDBytes(t *testing.T) {
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	d := New(id)
	tests := []struct {
		offset uint64
		n      int
	}{{0, 1}, {0, 4}, {12, 4}, {15, 1}, {14, 4}}
	for _, tt := range tests {
		b := make([]byte, tt.n)
		d.Read(tt.offset, b)
		for i, v := range b {
			want := byte(0)
			if o := tt.offset + uint64(i); o < Size {
				want = id[o]
			}
			if v != want {
				t.Errorf("read %d bytes at %d: byte %d = %#x, want %#x", tt.n, tt.offset, i, v, want)
			}
		}
	}
	d.Write(0, []byte{1, 2, 3, 4})
	if d.ID() != id {
		t.Fatal("guest write changed the ID")
	}
}

func TestNewIDsDiffer(t *testing.T) {
	a, _ := NewID()
	b, _ := NewID()
	if a == b {
		t.Fatal("two random IDs are equal")
	}
}
