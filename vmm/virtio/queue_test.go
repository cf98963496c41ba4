package virtio_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

const (
	memSize  = 4 << 20
	ringBase = memory.GuestAddr(0x10000)
	heapBase = memory.GuestAddr(0x100000)
	heapEnd  = memory.GuestAddr(memSize)
)

type fixture struct {
	mem  *memory.Memory
	ring *virtiotest.Ring
	q    *virtio.Queue
	irq  *virtiotest.Notifications
}

func newFixture(t testing.TB, size uint16, features uint64) *fixture {
	t.Helper()
	mem, err := virtiotest.NewMemory(memSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	ring, err := virtiotest.NewRing(mem, ringBase, size, heapBase, heapEnd)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{mem: mem, ring: ring, q: virtio.NewQueue(0, size), irq: &virtiotest.Notifications{}}
	ring.Configure(f.q)
	if err := f.q.Activate(mem, features, f.irq); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestChainReadAndWrite(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		f := newFixture(t, 16, virtio.QueueFeatures)
		seg := virtiotest.Segments{
			Readable: [][]byte{[]byte("hello, "), []byte("device")},
			Writable: []uint32{3, 5},
		}
		add := f.ring.Add
		if indirect {
			add = f.ring.AddIndirect
		}
		head, err := add(seg)
		if err != nil {
			t.Fatal(err)
		}
		c, err := f.q.Pop()
		if err != nil || c == nil {
			t.Fatalf("indirect=%v: Pop = %v, %v", indirect, c, err)
		}
		if c.Head != head || c.ReadableLen() != 13 || c.WritableLen() != 8 || len(c.Readable()) != 2 || len(c.Writable()) != 2 {
			t.Fatalf("indirect=%v: chain head %d readable %d (%d bufs) writable %d (%d bufs)", indirect, c.Head, c.ReadableLen(), len(c.Readable()), c.WritableLen(), len(c.Writable()))
		}
		got, err := io.ReadAll(c.Reader())
		if err != nil || string(got) != "hello, device" {
			t.Fatalf("indirect=%v: read %q, %v", indirect, got, err)
		}
		w := c.Writer()
		if n, err := w.Write([]byte("0123456789")); n != 8 || !errors.Is(err, io.ErrShortWrite) {
			t.Fatalf("indirect=%v: Write = %d, %v; want 8, ErrShortWrite", indirect, n, err)
		}
		if err := f.q.PushUsed(c.Head, w.Written()); err != nil {
			t.Fatal(err)
		}
		if err := f.q.SignalUsed(); err != nil {
			t.Fatal(err)
		}
		u, ok, err := f.ring.PopUsed()
		if err != nil || !ok || u.Head != head || u.Len != 8 || string(u.Data) != "01234567" {
			t.Fatalf("indirect=%v: used %+v %v %v", indirect, u, ok, err)
		}
		if f.irq.UsedBuffers.Load() != 1 {
			t.Fatalf("indirect=%v: %d interrupts, want 1", indirect, f.irq.UsedBuffers.Load())
		}
		if c, err := f.q.Pop(); c != nil || err != nil {
			t.Fatalf("indirect=%v: second Pop = %v, %v", indirect, c, err)
		}
	}
}

func TestReaderBuffersAndAdvance(t *testing.T) {
	f := newFixture(t, 8, virtio.QueueFeatures)
	if _, err := f.ring.Add(virtiotest.Segments{Readable: [][]byte{[]byte("abc"), []byte("defgh")}, Writable: []uint32{4, 4}}); err != nil {
		t.Fatal(err)
	}
	c, err := f.q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	r := c.Reader()
	bufs, err := r.Buffers(nil, 5)
	if err != nil || len(bufs) != 2 || string(bufs[0]) != "abc" || string(bufs[1]) != "de" {
		t.Fatalf("Buffers(5) = %q, %v", bufs, err)
	}
	if r.Len() != 8 {
		t.Fatalf("Buffers moved the reader: Len %d", r.Len())
	}
	if err := r.Advance(4); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "efgh" {
		t.Fatalf("after Advance(4) read %q", rest)
	}
	if _, err := r.Buffers(nil, 1); err == nil {
		t.Fatal("Buffers past the end succeeded")
	}
	w := c.Writer()
	wb, err := w.Buffers(nil, 6)
	if err != nil || len(wb) != 2 || len(wb[0]) != 4 || len(wb[1]) != 2 {
		t.Fatalf("writer Buffers(6) = %d slices, %v", len(wb), err)
	}
	copy(wb[0], "WXYZ")
	copy(wb[1], "12")
	if err := w.Advance(6); err != nil || w.Written() != 6 || w.Len() != 2 {
		t.Fatalf("Advance: %v, written %d, left %d", err, w.Written(), w.Len())
	}
	if err := w.Advance(3); err == nil {
		t.Fatal("Advance past the end succeeded")
	}
	f.q.PushUsed(c.Head, w.Written())
	u, _, _ := f.ring.PopUsed()
	if string(u.Data) != "WXYZ12" {
		t.Fatalf("used data %q", u.Data)
	}
}

// rawDesc is one descriptor written verbatim by a malformed-chain case.
type rawDesc struct {
	table string // "" main table, "ind" the indirect table
	i     uint16
	addr  memory.GuestAddr
	len   uint32
	flags uint16
	next  uint16
}

const (
	indTable = memory.GuestAddr(0x200000)
	buf      = memory.GuestAddr(0x300000)
	nxt      = virtiotest.FlagNext
	wr       = virtiotest.FlagWrite
	ind      = virtiotest.FlagIndirect
)

func TestMalformedChains(t *testing.T) {
	const size = 8
	tests := []struct {
		name     string
		features uint64
		descs    []rawDesc
		head     uint16
		availIdx int // >0: write avail.idx instead of publishing head
		want     string
	}{
		{name: "head outside table", head: size, want: "outside the 8-entry descriptor table"},
		{name: "next outside table", descs: []rawDesc{{i: 0, addr: buf, len: 1, flags: nxt, next: size}}, want: "points at 8, outside"},
		{name: "loop", descs: []rawDesc{{i: 0, addr: buf, len: 1, flags: nxt, next: 1}, {i: 1, addr: buf, len: 1, flags: nxt, next: 0}}, want: "longer than 8 descriptors"},
		{name: "self loop", descs: []rawDesc{{i: 3, addr: buf, len: 1, flags: nxt, next: 3}}, head: 3, want: "longer than 8 descriptors"},
		{name: "buffer outside RAM", descs: []rawDesc{{i: 0, addr: memSize + 0x1000, len: 16}}, want: "not RAM"},
		{name: "buffer crossing the end of RAM", descs: []rawDesc{{i: 0, addr: memSize - 8, len: 16}}, want: "crosses the end"},
		{name: "buffer wrapping the address space", descs: []rawDesc{{i: 0, addr: ^memory.GuestAddr(0) - 4, len: 16}}, want: "wraps the address space"},
		{name: "readable after writable", descs: []rawDesc{{i: 0, addr: buf, len: 1, flags: wr | nxt, next: 1}, {i: 1, addr: buf, len: 1}}, want: "device-readable descriptor 1 follows"},
		{name: "indirect not negotiated", features: virtio.FeatureVersion1, descs: []rawDesc{{i: 0, addr: indTable, len: 16, flags: ind}}, want: "INDIRECT_DESC was not negotiated"},
		{name: "indirect with next", descs: []rawDesc{{i: 0, addr: indTable, len: 16, flags: ind | nxt, next: 1}}, want: "both INDIRECT and NEXT"},
		{name: "indirect table not a whole number of descriptors", descs: []rawDesc{{i: 0, addr: indTable, len: 24, flags: ind}}, want: "not a whole number"},
		{name: "empty indirect table", descs: []rawDesc{{i: 0, addr: indTable, len: 0, flags: ind}}, want: "not a whole number"},
		{name: "indirect table outside RAM", descs: []rawDesc{{i: 0, addr: memSize - 16, len: 32, flags: ind}}, want: "indirect table"},
		{name: "nested indirect", descs: []rawDesc{{i: 0, addr: indTable, len: 32, flags: ind}, {table: "ind", i: 0, addr: indTable, len: 32, flags: ind}}, want: "nested indirect"},
		{name: "indirect next outside its table", descs: []rawDesc{{i: 0, addr: indTable, len: 32, flags: ind}, {table: "ind", i: 0, addr: buf, len: 1, flags: nxt, next: 2}}, want: "outside its 2-entry table"},
		{name: "indirect loop", descs: []rawDesc{{i: 0, addr: indTable, len: 32, flags: ind}, {table: "ind", i: 0, addr: buf, len: 1, flags: nxt, next: 1}, {table: "ind", i: 1, addr: buf, len: 1, flags: nxt, next: 0}}, want: "longer than 8 descriptors"},
		{name: "direct then indirect then next", descs: []rawDesc{{i: 0, addr: buf, len: 1, flags: nxt, next: 1}, {i: 1, addr: indTable, len: 16, flags: ind | nxt, next: 2}}, want: "both INDIRECT and NEXT"},
		{name: "avail index too far ahead", availIdx: size + 1, want: "more than the queue size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			features := tt.features
			if features == 0 {
				features = virtio.QueueFeatures
			}
			f := newFixture(t, size, features)
			for _, d := range tt.descs {
				table := f.ring.Desc
				if d.table == "ind" {
					table = indTable
				}
				if err := f.ring.WriteDesc(table, d.i, d.addr, d.len, d.flags, d.next); err != nil {
					t.Fatal(err)
				}
			}
			if tt.availIdx > 0 {
				f.ring.SetAvailIdx(uint16(tt.availIdx))
			} else if err := f.ring.PublishHead(tt.head); err != nil {
				t.Fatal(err)
			}
			c, err := f.q.Pop()
			if err == nil || c != nil {
				t.Fatalf("Pop = %v, %v; want an error", c, err)
			}
			if !errors.Is(err, virtio.ErrInvalidChain) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Pop error %q; want ErrInvalidChain containing %q", err, tt.want)
			}
			// The queue stays broken: no later call touches the rings.
			if _, err2 := f.q.Pop(); err2 == nil {
				t.Fatal("second Pop succeeded on a broken queue")
			}
			if err := f.q.PushUsed(0, 0); err == nil {
				t.Fatal("PushUsed succeeded on a broken queue")
			}
		})
	}
}

// Valid chains that look unusual: zero-length descriptors, direct
// descriptors followed by an indirect one (§2.7.5.3.2), and a chain of
// exactly the queue size.
func TestUnusualValidChains(t *testing.T) {
	const size = 4
	tests := []struct {
		name          string
		descs         []rawDesc
		readable, wrt uint32
	}{
		{"zero-length descriptors", []rawDesc{{i: 0, addr: buf, len: 0, flags: nxt, next: 1}, {i: 1, addr: buf, len: 4, flags: wr}}, 0, 4},
		{"direct then indirect", []rawDesc{{i: 0, addr: buf, len: 16, flags: nxt, next: 1}, {i: 1, addr: indTable, len: 32, flags: ind}, {table: "ind", i: 0, addr: buf, len: 8, flags: nxt, next: 1}, {table: "ind", i: 1, addr: buf + 8, len: 1, flags: wr}}, 24, 1},
		{"chain of queue size", []rawDesc{{i: 0, addr: buf, len: 1, flags: nxt, next: 1}, {i: 1, addr: buf, len: 1, flags: nxt, next: 2}, {i: 2, addr: buf, len: 1, flags: nxt | wr, next: 3}, {i: 3, addr: buf, len: 1, flags: wr}}, 2, 2},
		{"write flag on the indirect descriptor is ignored", []rawDesc{{i: 0, addr: indTable, len: 16, flags: ind | wr}, {table: "ind", i: 0, addr: buf, len: 3}}, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, size, virtio.QueueFeatures)
			for _, d := range tt.descs {
				table := f.ring.Desc
				if d.table == "ind" {
					table = indTable
				}
				f.ring.WriteDesc(table, d.i, d.addr, d.len, d.flags, d.next)
			}
			f.ring.PublishHead(0)
			c, err := f.q.Pop()
			if err != nil || c == nil {
				t.Fatalf("Pop = %v, %v", c, err)
			}
			if c.ReadableLen() != tt.readable || c.WritableLen() != tt.wrt {
				t.Fatalf("readable %d writable %d, want %d %d", c.ReadableLen(), c.WritableLen(), tt.readable, tt.wrt)
			}
		})
	}
}

// lenientMemory claims every range is RAM, so the walker's 4 GiB total
// check can be reached without mapping gigabytes.
type lenientMemory struct{ *memory.Memory }

func (m lenientMemory) Slice(addr memory.GuestAddr, n uint64) ([]byte, error) {
	if addr >= 0x1000_0000 {
		return nil, nil
	}
	return m.Memory.Slice(addr, n)
}

func TestChainLongerThan4GiB(t *testing.T) {
	f := newFixture(t, 4, virtio.QueueFeatures)
	q := virtio.NewQueue(0, 4)
	f.ring.Configure(q)
	if err := q.Activate(lenientMemory{f.mem}, virtio.QueueFeatures, f.irq); err != nil {
		t.Fatal(err)
	}
	f.ring.WriteDesc(f.ring.Desc, 0, 0x1000_0000, 0xffff_0000, nxt, 1)
	f.ring.WriteDesc(f.ring.Desc, 1, 0x2000_0000, 0x0002_0000, 0, 0)
	f.ring.PublishHead(0)
	if _, err := q.Pop(); err == nil || !strings.Contains(err.Error(), "longer than 4 GiB") {
		t.Fatalf("Pop error %v, want a 4 GiB error", err)
	}
}

func TestQueueValidate(t *testing.T) {
	tests := []struct {
		name   string
		size   uint16
		desc   memory.GuestAddr
		avail  memory.GuestAddr
		used   memory.GuestAddr
		wanted string
	}{
		{"valid", 256, 0x10000, 0x11000, 0x12000, ""},
		{"size zero", 0, 0x10000, 0x11000, 0x12000, "not a power of two"},
		{"size not a power of two", 100, 0x10000, 0x11000, 0x12000, "not a power of two"},
		{"size above maximum", 512, 0x10000, 0x11000, 0x12000, "not a power of two in [1, 256]"},
		{"descriptor table misaligned", 256, 0x10008, 0x11000, 0x12000, "not 16-byte aligned"},
		{"available ring misaligned", 256, 0x10000, 0x11001, 0x12000, "not 2-byte aligned"},
		{"used ring misaligned", 256, 0x10000, 0x11000, 0x12002, "not 4-byte aligned"},
		{"descriptor table outside RAM", 256, memSize, 0x11000, 0x12000, "descriptor table"},
		{"used ring crossing the end of RAM", 256, 0x10000, 0x11000, memSize - 0x100, "used ring"},
	}
	mem, err := virtiotest.NewMemory(memSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, tt := range tests {
		q := virtio.NewQueue(1, 256)
		q.SetSize(tt.size)
		q.SetDescTable(tt.desc)
		q.SetAvailRing(tt.avail)
		q.SetUsedRing(tt.used)
		if err := q.Validate(mem); err != nil {
			t.Errorf("%s: unready queue invalid: %v", tt.name, err)
		}
		q.SetReady(true)
		err := q.Validate(mem)
		if tt.wanted == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wanted) {
			t.Errorf("%s: Validate = %v, want %q", tt.name, err, tt.wanted)
		}
	}
}

func TestInterruptSuppression(t *testing.T) {
	t.Run("no interrupt flag", func(t *testing.T) {
		f := newFixture(t, 8, virtio.FeatureVersion1)
		f.ring.SetAvailFlags(1)
		f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
		c, _ := f.q.Pop()
		f.q.PushUsed(c.Head, 0)
		f.q.SignalUsed()
		if n := f.irq.UsedBuffers.Load(); n != 0 {
			t.Fatalf("%d interrupts with VRING_AVAIL_F_NO_INTERRUPT", n)
		}
		f.ring.SetAvailFlags(0)
		f.q.SignalUsed() // nothing new since the last decision
		if n := f.irq.UsedBuffers.Load(); n != 0 {
			t.Fatalf("%d interrupts with nothing used", n)
		}
		f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
		c, _ = f.q.Pop()
		f.q.PushUsed(c.Head, 0)
		f.q.SignalUsed()
		if n := f.irq.UsedBuffers.Load(); n != 1 {
			t.Fatalf("%d interrupts, want 1", n)
		}
	})
	t.Run("event index", func(t *testing.T) {
		f := newFixture(t, 8, virtio.QueueFeatures)
		// used_event = 2: interrupt when the entry with index 2 is used,
		// i.e. when used.idx moves past 2.
		f.ring.SetUsedEvent(2)
		var got []int64
		for i := 0; i < 5; i++ {
			f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
			c, _ := f.q.Pop()
			f.q.PushUsed(c.Head, 1)
			f.q.SignalUsed()
			got = append(got, f.irq.UsedBuffers.Load())
		}
		// The first decision always interrupts (no previous index); then
		// only the push that makes used.idx 3 crosses used_event 2.
		want := []int64{1, 1, 2, 2, 2}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("interrupt counts %v, want %v", got, want)
			}
		}
	})
}

func TestNotificationSuppression(t *testing.T) {
	t.Run("used flags", func(t *testing.T) {
		f := newFixture(t, 8, virtio.FeatureVersion1)
		f.q.DisableNotification()
		if f.ring.UsedFlags() != 1 {
			t.Fatalf("used.flags %d after DisableNotification", f.ring.UsedFlags())
		}
		more, err := f.q.EnableNotification()
		if err != nil || more || f.ring.UsedFlags() != 0 {
			t.Fatalf("EnableNotification = %v, %v; flags %d", more, err, f.ring.UsedFlags())
		}
		f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
		if more, _ := f.q.EnableNotification(); !more {
			t.Fatal("EnableNotification missed an available buffer")
		}
	})
	t.Run("avail event", func(t *testing.T) {
		f := newFixture(t, 8, virtio.QueueFeatures)
		f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
		f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
		f.q.Pop()
		if more, _ := f.q.EnableNotification(); !more {
			t.Fatal("EnableNotification did not report the second buffer")
		}
		if f.ring.AvailEvent() != 1 {
			t.Fatalf("avail_event %d, want 1", f.ring.AvailEvent())
		}
		f.q.Pop()
		if more, _ := f.q.EnableNotification(); more || f.ring.AvailEvent() != 2 {
			t.Fatalf("more=%v avail_event %d, want false, 2", more, f.ring.AvailEvent())
		}
		if f.ring.UsedFlags() != 0 {
			t.Fatal("event-idx queue set used.flags")
		}
	})
}

func TestUndoPop(t *testing.T) {
	f := newFixture(t, 8, virtio.QueueFeatures)
	if err := f.q.UndoPop(); err == nil {
		t.Fatal("UndoPop without Pop succeeded")
	}
	h1, _ := f.ring.Add(virtiotest.Segments{Readable: [][]byte{[]byte("a")}})
	f.ring.Add(virtiotest.Segments{Readable: [][]byte{[]byte("b")}})
	c, _ := f.q.Pop()
	if err := f.q.UndoPop(); err != nil {
		t.Fatal(err)
	}
	if err := f.q.UndoPop(); err == nil {
		t.Fatal("second UndoPop succeeded")
	}
	c2, _ := f.q.Pop()
	if c2.Head != c.Head || c2.Head != h1 {
		t.Fatalf("after UndoPop got head %d, want %d", c2.Head, h1)
	}
}

// Indices are 16 bits and wrap: push many times the ring size through.
func TestIndicesWrap(t *testing.T) {
	f := newFixture(t, 4, virtio.QueueFeatures)
	for i := 0; i < 70000; i++ {
		payload := []byte{byte(i), byte(i >> 8), byte(i >> 16)}
		if _, err := f.ring.Add(virtiotest.Segments{Readable: [][]byte{payload}, Writable: []uint32{3}}); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		c, err := f.q.Pop()
		if err != nil || c == nil {
			t.Fatalf("round %d: Pop %v %v", i, c, err)
		}
		got, _ := io.ReadAll(c.Reader())
		w := c.Writer()
		w.Write(got)
		f.q.PushUsed(c.Head, w.Written())
		u, ok, err := f.ring.PopUsed()
		if !ok || err != nil || !bytes.Equal(u.Data, payload) {
			t.Fatalf("round %d: used %+v %v %v", i, u, ok, err)
		}
		if i%4096 == 0 {
			// Reuse buffer space: the test heap is a bump allocator.
			f.ring.ResetHeap()
		}
	}
}

func TestQueueStateRoundTrip(t *testing.T) {
	f := newFixture(t, 8, virtio.QueueFeatures)
	for i := 0; i < 3; i++ {
		f.ring.Add(virtiotest.Segments{Writable: []uint32{1}})
	}
	c, _ := f.q.Pop()
	f.q.PushUsed(c.Head, 1)
	f.q.SignalUsed()
	st := f.q.State()
	if !st.Active || st.NextAvail != 1 || st.NextUsed != 1 || !st.EventIdx || !st.Indirect || !st.SignalledValid {
		t.Fatalf("state %+v", st)
	}
	q, err := virtio.RestoreQueue(0, 8, st, f.mem, virtio.QueueFeatures, f.irq)
	if err != nil {
		t.Fatal(err)
	}
	if q.State() != st {
		t.Fatalf("restored state %+v, want %+v", q.State(), st)
	}
	// The restored queue continues where the old one stopped.
	c2, err := q.Pop()
	if err != nil || c2 == nil || c2.Head == c.Head {
		t.Fatalf("restored Pop = %v, %v", c2, err)
	}

	bad := []struct {
		name   string
		mutate func(*virtio.QueueState)
		feat   uint64
		want   string
	}{
		{"max size differs", func(s *virtio.QueueState) { s.MaxSize = 16 }, virtio.QueueFeatures, "maximum size"},
		{"size not a power of two", func(s *virtio.QueueState) { s.Size = 6 }, virtio.QueueFeatures, "not a power of two"},
		{"size zero", func(s *virtio.QueueState) { s.Size = 0 }, virtio.QueueFeatures, "not a power of two"},
		{"ring outside RAM", func(s *virtio.QueueState) { s.UsedRing = memSize }, virtio.QueueFeatures, "used ring"},
		{"misaligned ring", func(s *virtio.QueueState) { s.DescTable++ }, virtio.QueueFeatures, "aligned"},
		{"used index differs from memory", func(s *virtio.QueueState) { s.NextUsed = 5 }, virtio.QueueFeatures, "differs from 1 in guest memory"},
		{"avail index far behind", func(s *virtio.QueueState) { s.NextAvail = 60000 }, virtio.QueueFeatures, "more than the queue size"},
		{"features disagree", func(s *virtio.QueueState) {}, virtio.FeatureVersion1, "disagree"},
		{"inactive with indices", func(s *virtio.QueueState) { s.Active = false }, virtio.QueueFeatures, "inactive queue has ring indices"},
	}
	for _, b := range bad {
		s := st
		b.mutate(&s)
		if _, err := virtio.RestoreQueue(0, 8, s, f.mem, b.feat, f.irq); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: RestoreQueue = %v, want %q", b.name, err, b.want)
		}
	}
}
