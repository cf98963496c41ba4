// Package bus routes guest port and MMIO accesses to devices. The bus owns
// addresses; a device sees only the offset within its own range, so devices
// can be placed anywhere and tested alone.
package bus

import (
	"fmt"
	"sort"
	"sync"
)

// Device is anything that answers reads and writes within its range. Read
// fills data (len 1–8); Write consumes it. Implementations do their own
// locking: the bus calls them from every vCPU thread.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type entry struct {
	base, size uint64
	name       string
	dev        Device
}

// Bus is an address space (the I/O ports or the MMIO window). Devices are
// inserted while the VM is built and never removed, so lookups need only a
// read lock.
type Bus struct {
	mu      sync.RWMutex
	entries []entry // sorted by base, non-overlapping
	// Unhandled counts accesses that hit no device; a guest probing for
	// hardware it does not have is normal, but the count shows up in
	// metrics and debugging.
	unhandled uint64
}

// Insert places dev at [base, base+size). Overlaps are a programming error in
// the VM builder and are reported, not silently shadowed.
func (b *Bus) Insert(name string, base, size uint64, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus: %s: bad range %#x+%#x", name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.entries {
		if base < e.base+e.size && e.base < base+size {
			return fmt.Errorf("bus: %s at %#x+%#x overlaps %s at %#x+%#x", name, base, size, e.name, e.base, e.size)
		}
	}
	b.entries = append(b.entries, entry{base: base, size: size, name: name, dev: dev})
	sort.Slice(b.entries, func(i, j int) bool { return b.entries[i].base < b.entries[j].base })
	return nil
}

func (b *Bus) find(addr uint64, n int) (entry, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base+b.entries[i].size > addr })
	if i == len(b.entries) {
		return entry{}, false
	}
	e := b.entries[i]
	if addr < e.base || addr+uint64(n) > e.base+e.size {
		return entry{}, false
	}
	return e, true
}

// Read dispatches a guest read. Reads that hit no device return all ones,
// as an empty ISA bus or unclaimed MMIO does on real hardware.
func (b *Bus) Read(addr uint64, data []byte) bool {
	e, ok := b.find(addr, len(data))
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		b.mu.Lock()
		b.unhandled++
		b.mu.Unlock()
		return false
	}
	e.dev.Read(addr-e.base, data)
	return true
}

// Write dispatches a guest write; writes that hit no device are dropped.
func (b *Bus) Write(addr uint64, data []byte) bool {
	e, ok := b.find(addr, len(data))
	if !ok {
		b.mu.Lock()
		b.unhandled++
		b.mu.Unlock()
		return false
	}
	e.dev.Write(addr-e.base, data)
	return true
}

// Unhandled returns how many accesses hit no device.
func (b *Bus) Unhandled() uint64 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.unhandled
}
