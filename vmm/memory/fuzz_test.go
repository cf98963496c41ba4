package memory

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// maxTouch bounds the bytes one fuzz input may write, so that an input
// never dirties more than a few pages of the 3 GiB mapping.
const maxTouch = 64 << 10

// inOneRegion is the accessors' contract, stated apart from Slice's code:
// [addr, addr+n) must lie inside a single region, its end computed without
// wrapping past 2^64. A zero-length access must still start at a RAM
// address (a zero-length range at a region's end, or in a hole, is not
// RAM).
func inOneRegion(regions []Region, addr GuestAddr, n uint64) bool {
	end, carry := bits.Add64(uint64(addr), n, 0)
	if carry != 0 {
		return false
	}
	for _, r := range regions {
		if addr >= r.Guest && addr < r.End() && end <= uint64(r.End()) {
			return true
		}
	}
	return false
}

// mappingOffset is where addr is in Mapping(), for an address in RAM.
func mappingOffset(regions []Region, addr GuestAddr) (Region, uint64) {
	for _, r := range regions {
		if addr >= r.Guest && addr < r.End() {
			return r, r.FileOffset + uint64(addr-r.Guest)
		}
	}
	return Region{}, 0
}

// FuzzAccessors drives every accessor of guest memory (Slice, Contains,
// Read, Write, WriteFrom, Zero, ReadUintN, WriteUintN) with an address and
// lengths from the input, on memory with both RAM regions (below the MMIO
// gap and from 4 GiB). Each must succeed exactly when its range lies in
// one region and otherwise return ErrOutOfBounds, with nothing written;
// what is written reads back, at the place in Mapping() the regions say,
// and no byte past it changes. The address is an anchor (0, the low
// region's end, the high region's start or end) plus a wrapping delta, so
// the fuzzer reaches every edge and 2^64 from a few bits.
func FuzzAccessors(f *testing.F) {
	m, err := New(Config{Size: uint64(MMIOGapStart) + 2<<20})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	regions := m.Regions()
	if len(regions) != 2 {
		f.Fatalf("regions = %d, want 2", len(regions))
	}
	anchors := []GuestAddr{0, regions[0].End(), regions[1].Guest, regions[1].End()}
	const (
		low, lowEnd, high, highEnd = 0, 1, 2, 3
		back                       = ^uint64(0) // delta -1
	)
	for _, s := range []struct {
		anchor uint8
		delta  uint64
		n      uint64
		data   []byte
	}{
		{low, 0, 0, nil},                        // zero length at RAM's start
		{low, 0x1000, 8, []byte("12345678")},    // well inside
		{lowEnd, back, 1, []byte{0xaa}},         // the low region's last byte
		{lowEnd, neg(8), 8, []byte("abcdefgh")}, // its last 8 bytes, exactly
		{lowEnd, neg(7), 8, []byte("abcdefgh")}, // one byte across its end
		{lowEnd, 0, 0, nil},                     // zero length at its end (the gap)
		{lowEnd, 0x1000, 4, []byte("gap!")},     // in the MMIO gap
		{high, back, 2, []byte{1, 2}},           // across the high region's start
		{high, 0, 2 << 20, []byte{7}},           // the whole high region
		{high, 0, 2<<20 + 1, nil},               // one byte more
		{highEnd, neg(8), 8, []byte("zyxwvuts")},
		{highEnd, 0, 0, nil},
		{highEnd, 0, 1, []byte{1}},
		{low, back, 1, []byte{1}},               // 2^64-1
		{low, neg(8), 16, []byte("wrap")},       // addr+n wraps past 2^64
		{low, 0x10, neg(0x10), nil},             // in RAM, addr+n wraps to exactly 0
		{low, 1, back, []byte{9}},               // n = 2^64-1
		{low, 0, uint64(MMIOGapStart), nil},     // all of the low region
		{low, 0, uint64(MMIOGapStart) + 1, nil}, // one past it
	} {
		f.Add(s.anchor, s.delta, s.n, s.data, uint64(0x0123456789abcdef))
	}
	f.Fuzz(func(t *testing.T, anchor uint8, delta, n uint64, data []byte, v uint64) {
		addr := anchors[int(anchor)%len(anchors)] + GuestAddr(delta)
		if len(data) > maxTouch {
			data = data[:maxTouch]
		}
		if r, off := mappingOffset(regions, addr); r.Host != nil {
			// Every input starts from zero pages and leaves them so.
			t.Cleanup(func() { release(t, r, off) })
		}
		checkErr := func(op string, addr GuestAddr, n uint64, err error) bool {
			t.Helper()
			want := inOneRegion(regions, addr, n)
			switch {
			case want && err != nil:
				t.Fatalf("%s(%#x, %#x) = %v, want success", op, uint64(addr), n, err)
			case !want && !errors.Is(err, ErrOutOfBounds):
				t.Fatalf("%s(%#x, %#x) = %v, want ErrOutOfBounds", op, uint64(addr), n, err)
			}
			return want
		}

		// Slice and Contains, any length: the slice is exactly the range,
		// where the regions put it in the mapping.
		s, err := m.Slice(addr, n)
		if checkErr("Slice", addr, n, err) {
			_, off := mappingOffset(regions, addr)
			if uint64(len(s)) != n || uint64(cap(s)) != n {
				t.Fatalf("Slice(%#x, %#x): len %d cap %d", uint64(addr), n, len(s), cap(s))
			}
			if n > 0 && reflect.ValueOf(s).Pointer() != reflect.ValueOf(m.Mapping()).Pointer()+uintptr(off) {
				t.Fatalf("Slice(%#x, %#x) is not at mapping offset %#x", uint64(addr), n, off)
			}
		} else if s != nil {
			t.Fatalf("Slice(%#x, %#x) failed but returned %d bytes", uint64(addr), n, len(s))
		}
		if got := m.Contains(addr, n); got != inOneRegion(regions, addr, n) {
			t.Fatalf("Contains(%#x, %#x) = %v", uint64(addr), n, got)
		}
		// Zero of any length, unless that would clear more than maxTouch
		// bytes (nothing is cleared when it fails).
		if !inOneRegion(regions, addr, n) || n <= maxTouch {
			checkErr("Zero", addr, n, m.Zero(addr, n))
		}

		k := uint64(len(data))
		if checkErr("Write", addr, k, m.Write(addr, data)) {
			expect(t, m, regions, addr, data)
			// WriteFrom the complement, then a Zero: each reads back.
			flipped := make([]byte, len(data))
			for i, b := range data {
				flipped[i] = ^b
			}
			checkErr("WriteFrom", addr, k, m.WriteFrom(addr, bytes.NewReader(flipped), k))
			expect(t, m, regions, addr, flipped)
			checkErr("Zero", addr, k, m.Zero(addr, k))
			expect(t, m, regions, addr, make([]byte, len(data)))
		} else {
			checkErr("Read", addr, k, m.Read(addr, make([]byte, len(data))))
			checkErr("WriteFrom", addr, k, m.WriteFrom(addr, bytes.NewReader(data), k))
		}
		// A reader one byte short: a short read where the range is RAM,
		// still ErrOutOfBounds where it is not.
		if err := m.WriteFrom(addr, bytes.NewReader(data), k+1); inOneRegion(regions, addr, k+1) {
			if err == nil || errors.Is(err, ErrOutOfBounds) || !(errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) {
				t.Fatalf("WriteFrom(%#x, %d bytes, %d) = %v, want a short read", uint64(addr), k, k+1, err)
			}
		} else if !errors.Is(err, ErrOutOfBounds) {
			t.Fatalf("WriteFrom(%#x, %d) = %v, want ErrOutOfBounds", uint64(addr), k+1, err)
		}
		if inOneRegion(regions, addr, k) {
			m.Zero(addr, k) // the short read may have copied bytes
		}

		// The fixed-width integers, little-endian.
		for _, w := range []struct {
			size  uint64
			write func() error
			read  func() (uint64, error)
		}{
			{1, func() error { return m.WriteUint8(addr, uint8(v)) }, func() (uint64, error) { x, err := m.ReadUint8(addr); return uint64(x), err }},
			{2, func() error { return m.WriteUint16(addr, uint16(v)) }, func() (uint64, error) { x, err := m.ReadUint16(addr); return uint64(x), err }},
			{4, func() error { return m.WriteUint32(addr, uint32(v)) }, func() (uint64, error) { x, err := m.ReadUint32(addr); return uint64(x), err }},
			{8, func() error { return m.WriteUint64(addr, v) }, func() (uint64, error) { return m.ReadUint64(addr) }},
		} {
			want := v & (^uint64(0) >> (64 - 8*w.size))
			ok := checkErr("WriteUint", addr, w.size, w.write())
			got, err := w.read()
			checkErr("ReadUint", addr, w.size, err)
			if !ok {
				if got != 0 {
					t.Fatalf("ReadUint%d(%#x) failed but returned %#x", 8*w.size, uint64(addr), got)
				}
				continue
			}
			if got != want {
				t.Fatalf("ReadUint%d(%#x) = %#x after writing %#x", 8*w.size, uint64(addr), got, want)
			}
			le := binary.LittleEndian.AppendUint64(nil, v)[:w.size]
			expect(t, m, regions, addr, le)
		}
	})
}

// expect checks that want is at addr through Read, Slice and the mapping
// at the offset the regions give, and that the byte after it, if RAM of
// the same region, is still zero.
func expect(t *testing.T, m *Memory, regions []Region, addr GuestAddr, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if err := m.Read(addr, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Read(%#x, %d) = %x, %v; want %x", uint64(addr), len(want), got, err, want)
	}
	r, off := mappingOffset(regions, addr)
	if mapped := m.Mapping()[off : off+uint64(len(want))]; !bytes.Equal(mapped, want) {
		t.Fatalf("the mapping at %#x (for %#x) holds %x, want %x", off, uint64(addr), mapped, want)
	}
	after := addr + GuestAddr(len(want))
	if after < r.End() {
		if b, err := m.ReadUint8(after); err != nil || b != 0 {
			t.Fatalf("the byte after a %d-byte access at %#x is %#x, %v; want 0 (untouched)", len(want), uint64(addr), b, err)
		}
	}
}

// neg is -x modulo 2^64: a step back from an anchor.
func neg(x uint64) uint64 { return -x }

// release gives back the pages an input may have touched, from the page of
// off to maxTouch+8 bytes past it within r: they read as zero again.
func release(t *testing.T, r Region, off uint64) {
	lo := (off - r.FileOffset) &^ (PageSize - 1)
	hi := min(off-r.FileOffset+maxTouch+8+PageSize-1, r.Size()) &^ (PageSize - 1)
	if err := unix.Madvise(r.Host[lo:hi], unix.MADV_DONTNEED); err != nil {
		t.Errorf("madvise(MADV_DONTNEED) [%#x, %#x): %v", lo, hi, err)
	}
}
