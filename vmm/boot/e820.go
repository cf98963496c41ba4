package boot

import (
	"errors"
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

// MemType is an e820 range type. The PVH memory map uses the same values.
type MemType uint32

const (
	MemRAM      MemType = 1
	MemReserved MemType = 2
)

func (t MemType) String() string {
	switch t {
	case MemRAM:
		return "ram"
	case MemReserved:
		return "reserved"
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// MemoryMapEntry is one range of the map handed to the kernel.
type MemoryMapEntry struct {
	Addr uint64
	Size uint64
	Type MemType
}

// maxMemoryMapEntries is the room boot_params has for e820 entries
// (E820_MAX_ENTRIES_ZEROPAGE); the PVH table is given the same room.
const maxMemoryMapEntries = 128

// MemoryMap describes guest RAM (memory.Layout or the ranges of
// mem.Regions()) to the kernel. It is the single source for both the e820
// table and the PVH memory map, so the two protocols see the same machine:
// low RAM up to the EBDA, the EBDA and legacy hole reserved (they hold the MP
// table and stand where a PC has VGA and BIOS), RAM from 1 MiB, and any RAM
// above the 32-bit MMIO gap.
func MemoryMap(ram []memory.Range) ([]MemoryMapEntry, error) {
	if len(ram) == 0 {
		return nil, errors.New("memory map: no guest RAM")
	}
	low := ram[0]
	if low.Start != 0 {
		return nil, fmt.Errorf("memory map: guest RAM starts at %#x, not 0", uint64(low.Start))
	}
	if low.End() <= HighMemStart {
		return nil, fmt.Errorf("memory map: %d KiB of low RAM is too small: the first MiB holds boot structures and legacy areas, give the VM more memory", low.Size>>10)
	}
	mm := []MemoryMapEntry{
		{Addr: 0, Size: uint64(EBDAAddr), Type: MemRAM},
		{Addr: uint64(EBDAAddr), Size: uint64(HighMemStart - EBDAAddr), Type: MemReserved},
		{Addr: uint64(HighMemStart), Size: uint64(low.End() - HighMemStart), Type: MemRAM},
	}
	prevEnd := low.End()
	for _, r := range ram[1:] {
		if r.Start < prevEnd {
			return nil, fmt.Errorf("memory map: RAM range at %#x is out of order or overlaps the one before", uint64(r.Start))
		}
		if r.Size == 0 {
			continue
		}
		mm = append(mm, MemoryMapEntry{Addr: uint64(r.Start), Size: r.Size, Type: MemRAM})
		prevEnd = r.End()
	}
	if len(mm) > maxMemoryMapEntries {
		return nil, fmt.Errorf("memory map: %d entries exceed the %d the boot protocols can carry", len(mm), maxMemoryMapEntries)
	}
	return mm, nil
}

// ramRanges turns mem's regions into the ranges MemoryMap takes.
func ramRanges(mem *memory.Memory) []memory.Range {
	regs := mem.Regions()
	out := make([]memory.Range, 0, len(regs))
	for _, r := range regs {
		out = append(out, memory.Range{Start: r.Guest, Size: r.Size()})
	}
	return out
}
