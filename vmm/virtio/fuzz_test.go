package virtio_test

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

const (
	fuzzMem   = 1 << 20
	fuzzDesc  = memory.GuestAddr(0x1000)
	fuzzAvail = memory.GuestAddr(0x2000)
	fuzzUsed  = memory.GuestAddr(0x3000)
	fuzzHeap  = memory.GuestAddr(0x8000)
)

// fuzzInput encodes a queue for FuzzQueueWalker: a header byte for the
// size, one for features, then the descriptor table, the available ring
// and a heap of raw bytes (indirect tables, buffers).
func fuzzInput(sizeLog byte, features byte, descs [][4]uint64, heads []uint16, heap []byte) []byte {
	size := 1 << (sizeLog % 6)
	b := []byte{sizeLog, features}
	table := make([]byte, 16*size)
	for i, d := range descs {
		if i >= size {
			break
		}
		binary.LittleEndian.PutUint64(table[16*i:], d[0])
		binary.LittleEndian.PutUint32(table[16*i+8:], uint32(d[1]))
		binary.LittleEndian.PutUint16(table[16*i+12:], uint16(d[2]))
		binary.LittleEndian.PutUint16(table[16*i+14:], uint16(d[3]))
	}
	avail := make([]byte, 6+2*size)
	binary.LittleEndian.PutUint16(avail[2:], uint16(len(heads)))
	for i, h := range heads {
		if i < size {
			binary.LittleEndian.PutUint16(avail[4+2*i:], h)
		}
	}
	b = append(b, table...)
	b = append(b, avail...)
	return append(b, heap...)
}

// FuzzQueueWalker feeds random descriptor tables, available rings and
// indirect tables to a queue and drives it as a device would. Whatever the
// input, nothing may panic or touch memory outside guest RAM, and every
// chain Pop returns must satisfy the invariants devices rely on.
func FuzzQueueWalker(f *testing.F) {
	heap := uint64(fuzzHeap)
	f.Add(fuzzInput(2, 0x03, [][4]uint64{{heap, 16, 1, 1}, {heap + 16, 8, 2, 0}}, []uint16{0}, nil))
	// An indirect chain whose table sits in the heap.
	table := make([]byte, 32)
	binary.LittleEndian.PutUint64(table[0:], heap+64)
	binary.LittleEndian.PutUint32(table[8:], 4)
	binary.LittleEndian.PutUint16(table[12:], 1)
	binary.LittleEndian.PutUint16(table[14:], 1)
	binary.LittleEndian.PutUint64(table[16:], heap+128)
	binary.LittleEndian.PutUint32(table[24:], 4)
	binary.LittleEndian.PutUint16(table[28:], 2)
	f.Add(fuzzInput(3, 0x83, [][4]uint64{{heap, 32, 4, 0}}, []uint16{0, 0, 0}, table))
	f.Add(fuzzInput(1, 0x01, [][4]uint64{{heap, 1, 1, 1}, {heap, 1, 1, 0}}, []uint16{0}, nil)) // loop
	f.Add(fuzzInput(0, 0x00, nil, []uint16{7, 7, 7}, nil))                                     // index too far
	f.Add(fuzzInput(5, 0x82, [][4]uint64{{^uint64(0) - 3, 16, 0, 0}}, []uint16{0}, nil))

	mem, err := virtiotest.NewMemory(fuzzMem)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	irq := &virtiotest.Notifications{}

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		size := uint16(1) << (data[0] % 6)
		features := uint64(virtio.FeatureVersion1)
		if data[1]&1 != 0 {
			features |= virtio.FeatureIndirectDesc
		}
		if data[1]&2 != 0 {
			features |= virtio.FeatureEventIdx
		}
		rest := data[2:]
		mem.Zero(0, fuzzMem)
		put := func(addr memory.GuestAddr, n int) {
			k := min(n, len(rest))
			mem.Write(addr, rest[:k])
			rest = rest[k:]
		}
		put(fuzzDesc, 16*int(size))
		if data[1]&0x80 != 0 {
			// Pull descriptor addresses into (or just past) guest RAM so
			// that more inputs reach the deeper checks.
			for i := range memory.GuestAddr(size) {
				a, _ := mem.ReadUint64(fuzzDesc + 16*i)
				mem.WriteUint64(fuzzDesc+16*i, a&(2*fuzzMem-1))
			}
		}
		put(fuzzAvail, 6+2*int(size))
		put(fuzzHeap, fuzzMem-int(fuzzHeap))

		q := virtio.NewQueue(0, 32)
		q.SetSize(size)
		q.SetDescTable(fuzzDesc)
		q.SetAvailRing(fuzzAvail)
		q.SetUsedRing(fuzzUsed)
		q.SetReady(true)
		if err := q.Activate(mem, features, irq); err != nil {
			t.Fatalf("activate: %v", err)
		}
		for range 2 * int(size) {
			c, err := q.Pop()
			if err != nil {
				if !errors.Is(err, virtio.ErrInvalidChain) {
					t.Fatalf("Pop error not ErrInvalidChain: %v", err)
				}
				if _, err := q.Pop(); err == nil {
					t.Fatal("queue not sticky-broken after an error")
				}
				return
			}
			if c == nil {
				break
			}
			checkChain(t, mem, c, size)
			if _, err := io.Copy(io.Discard, c.Reader()); err != nil {
				t.Fatalf("read chain: %v", err)
			}
			w := c.Writer()
			fill := make([]byte, c.WritableLen())
			if n, err := w.Write(fill); err != nil || n != len(fill) {
				t.Fatalf("write chain: %d, %v", n, err)
			}
			if err := q.PushUsed(c.Head, w.Written()); err != nil {
				t.Fatalf("PushUsed: %v", err)
			}
			if err := q.SignalUsed(); err != nil {
				t.Fatalf("SignalUsed: %v", err)
			}
		}
		if _, err := q.EnableNotification(); err != nil && !errors.Is(err, virtio.ErrInvalidChain) {
			t.Fatalf("EnableNotification: %v", err)
		}
	})
}

func checkChain(t *testing.T, mem *memory.Memory, c *virtio.Chain, size uint16) {
	t.Helper()
	if c.Head >= size {
		t.Fatalf("head %d outside a %d-entry table", c.Head, size)
	}
	if n := len(c.Readable()) + len(c.Writable()); n > int(size) {
		t.Fatalf("%d buffers in a queue of %d", n, size)
	}
	var r, w uint64
	for _, b := range c.Readable() {
		if !mem.Contains(b.Addr, uint64(b.Len)) {
			t.Fatalf("readable buffer %#x+%d outside RAM", uint64(b.Addr), b.Len)
		}
		r += uint64(b.Len)
	}
	for _, b := range c.Writable() {
		if !mem.Contains(b.Addr, uint64(b.Len)) {
			t.Fatalf("writable buffer %#x+%d outside RAM", uint64(b.Addr), b.Len)
		}
		w += uint64(b.Len)
	}
	if r != uint64(c.ReadableLen()) || w != uint64(c.WritableLen()) {
		t.Fatalf("lengths %d/%d, buffers sum to %d/%d", c.ReadableLen(), c.WritableLen(), r, w)
	}
}
