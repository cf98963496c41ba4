// Package virtiotest plays the driver's side of split virtqueues in guest
// memory, for device and transport tests that run without a guest or KVM:
// it lays out rings, adds descriptor chains (direct or indirect, or raw
// descriptors for malformed cases), publishes them and reads the used ring
// back, the way Linux's virtio_ring.c does.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
)

// Descriptor flags, as the driver writes them.
const (
	FlagNext     = 1
	FlagWrite    = 2
	FlagIndirect = 4
)

// NewMemory returns size bytes of anonymous guest memory (no KVM needed).
func NewMemory(size uint64) (*memory.Memory, error) {
	return memory.New(memory.Config{Size: size})
}

// Ring is the driver's view of one split queue.
type Ring struct {
	Mem   *memory.Memory
	Size  uint16
	Desc  memory.GuestAddr
	Avail memory.GuestAddr
	Used  memory.GuestAddr

	availIdx uint16
	lastUsed uint16
	free     []uint16
	// chains remembers, per head, the descriptors to free and the writable
	// buffers to read back.
	chains map[uint16]chainInfo
	// heap is a bump allocator for buffers and indirect tables.
	heapStart, heap, heapEnd memory.GuestAddr
}

type chainInfo struct {
	descs    []uint16
	writable []virtio.Buffer
}

// Layout sizes of a ring of n entries, each rounded to 16 bytes.
func ringBytes(n uint16) uint64 {
	return align(16*uint64(n), 16) + align(6+2*uint64(n), 16) + align(6+8*uint64(n), 16)
}

func align(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// NewRing lays out a ring of size entries at base, zeroed, and uses
// [heap, heapEnd) for buffers.
func NewRing(mem *memory.Memory, base memory.GuestAddr, size uint16, heap, heapEnd memory.GuestAddr) (*Ring, error) {
	r := &Ring{Mem: mem, Size: size, Desc: base, chains: map[uint16]chainInfo{}, heapStart: heap, heap: heap, heapEnd: heapEnd}
	r.Avail = base + memory.GuestAddr(align(16*uint64(size), 16))
	r.Used = r.Avail + memory.GuestAddr(align(6+2*uint64(size), 16))
	if err := mem.Zero(base, ringBytes(size)); err != nil {
		return nil, fmt.Errorf("ring at %#x: %w", uint64(base), err)
	}
	for i := range size {
		r.free = append(r.free, i)
	}
	return r, nil
}

// Configure gives q this ring's size and addresses and marks it ready, as
// a driver does through the transport.
func (r *Ring) Configure(q *virtio.Queue) {
	q.SetSize(r.Size)
	q.SetDescTable(r.Desc)
	q.SetAvailRing(r.Avail)
	q.SetUsedRing(r.Used)
	q.SetReady(true)
}

// Alloc reserves n bytes (16-byte aligned) of buffer space.
func (r *Ring) Alloc(n uint32) (memory.GuestAddr, error) {
	a := memory.GuestAddr(align(uint64(r.heap), 16))
	if a+memory.GuestAddr(n) > r.heapEnd {
		return 0, fmt.Errorf("virtiotest: buffer heap exhausted")
	}
	r.heap = a + memory.GuestAddr(n)
	return a, nil
}

// ResetHeap reuses the whole buffer space; call it only when no chain is
// outstanding.
func (r *Ring) ResetHeap() { r.heap = r.heapStart }

// WriteDesc writes descriptor i of the table at table verbatim.
func (r *Ring) WriteDesc(table memory.GuestAddr, i uint16, addr memory.GuestAddr, length uint32, flags, next uint16) error {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], uint64(addr))
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	return r.Mem.Write(table+memory.GuestAddr(i)*16, b[:])
}

// PublishHead puts head in the next available slot and advances avail.idx.
func (r *Ring) PublishHead(head uint16) error {
	slot := memory.GuestAddr(r.availIdx % r.Size)
	if err := r.Mem.WriteUint16(r.Avail+4+2*slot, head); err != nil {
		return err
	}
	r.availIdx++
	return r.Mem.WriteUint16(r.Avail+2, r.availIdx)
}

// SetAvailIdx writes avail.idx directly (malformed-index tests).
func (r *Ring) SetAvailIdx(idx uint16) error {
	r.availIdx = idx
	return r.Mem.WriteUint16(r.Avail+2, idx)
}

// SetAvailFlags writes avail.flags (VRING_AVAIL_F_NO_INTERRUPT is 1).
func (r *Ring) SetAvailFlags(f uint16) error { return r.Mem.WriteUint16(r.Avail, f) }

// SetUsedEvent writes used_event (VIRTIO_F_EVENT_IDX).
func (r *Ring) SetUsedEvent(v uint16) error {
	return r.Mem.WriteUint16(r.Avail+4+2*memory.GuestAddr(r.Size), v)
}

// AvailEvent reads avail_event, written by the device (VIRTIO_F_EVENT_IDX).
func (r *Ring) AvailEvent() uint16 {
	v, _ := r.Mem.ReadUint16(r.Used + 4 + 8*memory.GuestAddr(r.Size))
	return v
}

// UsedFlags reads used.flags (VRING_USED_F_NO_NOTIFY is 1).
func (r *Ring) UsedFlags() uint16 {
	v, _ := r.Mem.ReadUint16(r.Used)
	return v
}

// UsedIdx reads used.idx.
func (r *Ring) UsedIdx() uint16 {
	v, _ := r.Mem.ReadUint16(r.Used + 2)
	return v
}

// Segments describe a chain to add: readable contents, then writable sizes.
type Segments struct {
	Readable [][]byte
	Writable []uint32
}

// Add builds a chain of direct descriptors for s and publishes it.
func (r *Ring) Add(s Segments) (uint16, error) {
	n := len(s.Readable) + len(s.Writable)
	if n == 0 || n > len(r.free) {
		return 0, fmt.Errorf("virtiotest: %d descriptors asked, %d free", n, len(r.free))
	}
	descs := r.free[:n:n]
	r.free = r.free[n:]
	info := chainInfo{descs: descs}
	for i := range n {
		addr, length, flags, err := r.segment(s, i, &info)
		if err != nil {
			return 0, err
		}
		next := uint16(0)
		if i+1 < n {
			flags |= FlagNext
			next = descs[i+1]
		}
		if err := r.WriteDesc(r.Desc, descs[i], addr, length, flags, next); err != nil {
			return 0, err
		}
	}
	r.chains[descs[0]] = info
	return descs[0], r.PublishHead(descs[0])
}

// AddIndirect builds s as one indirect table referenced by a single
// descriptor, as Linux does for multi-buffer requests, and publishes it.
func (r *Ring) AddIndirect(s Segments) (uint16, error) {
	n := len(s.Readable) + len(s.Writable)
	if n == 0 || len(r.free) == 0 {
		return 0, fmt.Errorf("virtiotest: cannot add an indirect chain")
	}
	table, err := r.Alloc(uint32(16 * n))
	if err != nil {
		return 0, err
	}
	head := r.free[0]
	r.free = r.free[1:]
	info := chainInfo{descs: []uint16{head}}
	for i := range n {
		addr, length, flags, err := r.segment(s, i, &info)
		if err != nil {
			return 0, err
		}
		next := uint16(0)
		if i+1 < n {
			flags |= FlagNext
			next = uint16(i + 1)
		}
		if err := r.WriteDesc(table, uint16(i), addr, length, flags, next); err != nil {
			return 0, err
		}
	}
	if err := r.WriteDesc(r.Desc, head, table, uint32(16*n), FlagIndirect, 0); err != nil {
		return 0, err
	}
	r.chains[head] = info
	return head, r.PublishHead(head)
}

func (r *Ring) segment(s Segments, i int, info *chainInfo) (memory.GuestAddr, uint32, uint16, error) {
	if i < len(s.Readable) {
		data := s.Readable[i]
		addr, err := r.Alloc(uint32(len(data)))
		if err != nil {
			return 0, 0, 0, err
		}
		return addr, uint32(len(data)), 0, r.Mem.Write(addr, data)
	}
	length := s.Writable[i-len(s.Readable)]
	addr, err := r.Alloc(length)
	if err != nil {
		return 0, 0, 0, err
	}
	info.writable = append(info.writable, virtio.Buffer{Addr: addr, Len: length})
	return addr, length, FlagWrite, nil
}

// Used is one used-ring entry with the writable buffers of its chain.
type Used struct {
	Head uint16
	Len  uint32
	// Data is the chain's writable part, concatenated, cut to Len.
	Data []byte
}

// PopUsed returns the next used entry, if the device published one, and
// frees its descriptors. Like Linux's virtqueue_get_buf and
// virtqueue_enable_cb, it then sets used_event to the next entry it
// expects, so that a device using VIRTIO_F_EVENT_IDX interrupts for it.
func (r *Ring) PopUsed() (Used, bool, error) { return r.popUsed(true) }

// PopUsedEntry is PopUsed without copying the data out (benchmarks).
func (r *Ring) PopUsedEntry() (Used, bool, error) { return r.popUsed(false) }

func (r *Ring) popUsed(withData bool) (Used, bool, error) {
	if r.UsedIdx() == r.lastUsed {
		return Used{}, false, nil
	}
	slot := memory.GuestAddr(r.lastUsed % r.Size)
	id, err := r.Mem.ReadUint32(r.Used + 4 + 8*slot)
	if err != nil {
		return Used{}, false, err
	}
	length, err := r.Mem.ReadUint32(r.Used + 8 + 8*slot)
	if err != nil {
		return Used{}, false, err
	}
	r.lastUsed++
	if err := r.SetUsedEvent(r.lastUsed); err != nil {
		return Used{}, false, err
	}
	info, ok := r.chains[uint16(id)]
	if !ok {
		return Used{}, false, fmt.Errorf("virtiotest: device used unknown head %d", id)
	}
	delete(r.chains, uint16(id))
	r.free = append(r.free, info.descs...)
	u := Used{Head: uint16(id), Len: length}
	if !withData {
		return u, true, nil
	}
	for _, b := range info.writable {
		buf := make([]byte, b.Len)
		if err := r.Mem.Read(b.Addr, buf); err != nil {
			return Used{}, false, err
		}
		u.Data = append(u.Data, buf...)
	}
	if uint64(length) <= uint64(len(u.Data)) {
		u.Data = u.Data[:length]
	}
	return u, true, nil
}

// Notifications counts interrupts: a virtio.Interrupt for queue tests.
// If C is not nil, every interrupt also sends on it (dropped when full).
type Notifications struct {
	UsedBuffers, ConfigChanges atomic.Int64
	C                          chan struct{}
}

// NewNotifications returns Notifications with a channel of 1024 slots.
func NewNotifications() *Notifications { return &Notifications{C: make(chan struct{}, 1024)} }

func (n *Notifications) UsedBuffer() error    { n.UsedBuffers.Add(1); n.send(); return nil }
func (n *Notifications) ConfigChanged() error { n.ConfigChanges.Add(1); n.send(); return nil }

func (n *Notifications) send() {
	if n.C == nil {
		return
	}
	select {
	case n.C <- struct{}{}:
	default:
	}
}

// Trigger counts interrupt line pulses: an mmio.Trigger for transport
// tests. C receives a value on every pulse (dropped when full).
type Trigger struct {
	Count atomic.Int64
	C     chan struct{}
}

// NewTrigger returns a Trigger whose channel holds up to 1024 pulses.
func NewTrigger() *Trigger { return &Trigger{C: make(chan struct{}, 1024)} }

func (t *Trigger) Trigger() error {
	t.Count.Add(1)
	select {
	case t.C <- struct{}{}:
	default:
	}
	return nil
}
