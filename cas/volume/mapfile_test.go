package volume

import (
	"bytes"
	"errors"
	"testing"

	"github.com/voltvmm/volt/cas"
)

func TestMapEncoding(t *testing.T) {
	base := cas.Sum([]byte("base"))
	m := &Map{BlockSize: 4096, Size: 70*4096 + 1, Base: base, Generation: 9, Written: make([]uint64, 2)}
	for _, b := range []int64{0, 1, 63, 64, 70} {
		m.setWritten(b)
	}
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseMap(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got.WrittenBlocks() != 5 || !got.isWritten(70) || got.isWritten(2) || got.Base != base || got.Generation != 9 {
		t.Errorf("round trip: %+v", got)
	}
	for i := range enc {
		bad := bytes.Clone(enc)
		bad[i] ^= 0x10
		if _, err := ParseMap(bad); !errors.Is(err, ErrBadMap) {
			t.Fatalf("a flipped bit in byte %d was accepted: %v", i, err)
		}
	}
	if _, err := ParseMap(enc[:len(enc)-1]); err == nil {
		t.Error("accepted a truncated map")
	}
	m.Written[1] |= 1 << 10 // block 74: past the end
	if _, err := m.MarshalBinary(); err == nil {
		t.Error("encoded bits past the last block")
	}
}

func FuzzParseMap(f *testing.F) {
	for _, m := range []*Map{
		{BlockSize: 4096, Size: 0, Base: cas.Sum([]byte("a")), Written: nil},
		{BlockSize: 4096, Size: 100 * 4096, Base: cas.Sum([]byte("b")), Generation: 3, Written: []uint64{0xff00ff, 1 << 35}},
		{BlockSize: 2 << 20, Size: 5 << 20, Base: cas.Sum([]byte("c")), Written: []uint64{5}},
	} {
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMap(b)
		if err != nil {
			return
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed map does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatal("accepted a non-canonical map")
		}
	})
}
