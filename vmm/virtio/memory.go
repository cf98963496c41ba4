package virtio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/voltvmm/volt/vmm/memory"
)

// Memory is the guest memory a queue reads and writes. *memory.Memory
// satisfies it. Slice must fail for any range that is not wholly inside one
// RAM region; everything in this package goes through it, so a guest
// address can never reach outside guest RAM.
type Memory interface {
	Slice(addr memory.GuestAddr, n uint64) ([]byte, error)
}

// DirtyMarker is implemented by guest memory that tracks pages written by
// the VMM itself (KVM's dirty log sees only the guest's writes). When the
// Memory given to a queue implements it, every device write into guest
// memory (used ring entries and indices, writable buffers) is reported.
type DirtyMarker interface {
	MarkDirty(addr memory.GuestAddr, n uint64)
}

var _ Memory = (*memory.Memory)(nil)

// Ring indices and ring entries live in memory that guest vCPUs write while
// the device reads it, concurrently, on other CPUs. Two properties are
// needed (virtio 1.2 §2.7.13, and Linux's virtio_ring.c on the other side):
//
//  1. No tearing: a 16-bit index is read and written as one access. The
//     queue checks at activation that every ring is aligned as §2.7 demands
//     (descriptor table 16, available ring 2, used ring 4), so each index is
//     2-byte aligned, never crosses a cache line, and the single 16-bit MOV
//     that encoding/binary's Uint16/PutUint16 compile to on amd64 is
//     single-copy atomic (checked with go build -gcflags=-S: one MOVWLZX in
//     load16, one MOVW in store16, LOCK XADDL in fence).
//  2. Ordering: the device must read avail.idx before the ring entries and
//     descriptors it covers (else it may see stale entries), write a used
//     entry before the used.idx that publishes it, and write used.idx (or
//     avail_event) before reading used_event/flags (else an interrupt or a
//     notification can be lost: a store followed by a load is the one
//     reordering x86 does). sync/atomic cannot be applied to guest memory
//     directly here — that takes a pointer conversion, and unsafe is
//     confined to vmm/kvm — so fence() issues a sync/atomic read-modify-write
//     on a queue-local word: on amd64 a LOCK-prefixed instruction, which is
//     a full hardware barrier, and for the Go compiler an operation no other
//     memory access is moved across. Each call site says which order it
//     enforces.
type barrier struct{ word atomic.Uint32 }

func (b *barrier) fence() { b.word.Add(1) }

// load16 reads a little-endian u16 that the guest may be writing.
func load16(mem Memory, addr memory.GuestAddr) (uint16, error) {
	s, err := mem.Slice(addr, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// store16 writes a little-endian u16 that the guest may be reading.
func store16(mem Memory, addr memory.GuestAddr, v uint16) error {
	s, err := mem.Slice(addr, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	markDirty(mem, addr, 2)
	return nil
}

func markDirty(mem Memory, addr memory.GuestAddr, n uint64) {
	if d, ok := mem.(DirtyMarker); ok && n > 0 {
		d.MarkDirty(addr, n)
	}
}

// checkRange reports whether [addr, addr+n) is guest RAM, with the range in
// the error.
func checkRange(mem Memory, what string, addr memory.GuestAddr, n uint64) error {
	if addr+memory.GuestAddr(n) < addr {
		return fmt.Errorf("%s at %#x (+%#x) wraps the address space", what, uint64(addr), n)
	}
	if _, err := mem.Slice(addr, n); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
