package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
)

// Selectors follow Linux's boot conventions (__BOOT_CS = 0x10,
// __BOOT_DS = 0x18), which the 32- and 64-bit boot protocols require; the
// descriptor at 0x08 stays null as in Linux's boot GDT. The TSS takes the
// next slot and, in long mode, the one after it for the upper base half.
const (
	SelectorCode uint16 = 0x10
	SelectorData uint16 = 0x18
	SelectorTSS  uint16 = 0x20

	gdtEntries = 6
)

// DescriptorTable is a GDTR or IDTR value, in the form KVM takes it.
type DescriptorTable = kvm.DTable

// Segment is a segment register as KVM's kvm_segment describes it: the
// descriptor unpacked, with the limit in bytes. The boot loader produces
// KVM's own plain struct so that the VMM can install it without a copy.
type Segment = kvm.Segment

// Access-byte types (SDM vol. 3 3.4.5.1 and 3.5).
const (
	typeDataRWAccessed = 0x3 // read/write, accessed
	typeCodeERAccessed = 0xb // execute/read, accessed
	typeTSSBusy        = 0xb // 32/64-bit TSS, busy: what TR must hold once loaded
	typeLDT            = 0x2
)

// descriptor is one packed 8-byte GDT entry.
type descriptor uint64

// Flag nibble bits (descriptor bits 52-55).
const (
	flagAVL = 1 << 0
	flagL   = 1 << 1
	flagDB  = 1 << 2
	flagG   = 1 << 3
)

// makeDescriptor packs a descriptor. system selects S=0 (TSS, LDT).
func makeDescriptor(base uint32, limit uint32, typ uint8, system bool, flags uint8) descriptor {
	access := uint64(0x80) | uint64(typ&0xf) // present, DPL 0
	if !system {
		access |= 0x10
	}
	d := uint64(limit & 0xffff)
	d |= uint64(base&0xffffff) << 16
	d |= access << 40
	d |= uint64((limit>>16)&0xf) << 48
	d |= uint64(flags&0xf) << 52
	d |= uint64(base>>24) << 56
	return descriptor(d)
}

// segment unpacks d as the register state a CPU would hold after loading
// selector sel, so registers and the in-memory GDT cannot disagree.
func (d descriptor) segment(sel uint16) Segment {
	v := uint64(d)
	limit := uint32(v&0xffff) | uint32((v>>48)&0xf)<<16
	g := uint8((v >> 55) & 1)
	if g == 1 {
		limit = limit<<12 | 0xfff
	}
	return Segment{
		Base:     (v>>16)&0xffffff | (v>>56)<<24,
		Limit:    limit,
		Selector: sel,
		Type:     uint8((v >> 40) & 0xf),
		S:        uint8((v >> 44) & 1),
		DPL:      uint8((v >> 45) & 3),
		Present:  uint8((v >> 47) & 1),
		AVL:      uint8((v >> 52) & 1),
		L:        uint8((v >> 53) & 1),
		DB:       uint8((v >> 54) & 1),
		G:        g,
	}
}

// gdtFor returns the boot GDT: flat 4 GiB code and data, and a TSS. The
// code descriptor is 64-bit (L=1, D=0) for long mode and 32-bit (D=1)
// otherwise; everything else is shared by both protocols.
func gdtFor(longMode bool) [gdtEntries]descriptor {
	codeFlags := uint8(flagG | flagDB)
	if longMode {
		codeFlags = flagG | flagL
	}
	var g [gdtEntries]descriptor
	g[SelectorCode/8] = makeDescriptor(0, 0xfffff, typeCodeERAccessed, false, codeFlags)
	g[SelectorData/8] = makeDescriptor(0, 0xfffff, typeDataRWAccessed, false, flagG|flagDB)
	// In long mode a TSS descriptor is 16 bytes; the second half (base
	// bits 32-63) is zero and, read as a 32-bit GDT entry, is a null
	// descriptor, so the same table serves both modes.
	g[SelectorTSS/8] = makeDescriptor(uint32(TSSAddr), TSSSize-1, typeTSSBusy, true, 0)
	return g
}

// cpuTables is what writeGDT leaves in memory, as register values.
type cpuTables struct {
	gdt, idt             DescriptorTable
	code, data, tss, ldt Segment
}

// writeGDT writes the GDT, an empty IDT and a zeroed TSS, and returns the
// matching register state.
func writeGDT(mem *memory.Memory, longMode bool) (cpuTables, error) {
	g := gdtFor(longMode)
	buf := make([]byte, 8*len(g))
	for i, d := range g {
		binary.LittleEndian.PutUint64(buf[8*i:], uint64(d))
	}
	if err := mem.Write(GDTAddr, buf); err != nil {
		return cpuTables{}, fmt.Errorf("write GDT: %w", err)
	}
	// A single null gate: any exception before the kernel loads its IDT
	// becomes a triple fault (a clean VM exit) instead of a jump through
	// whatever bytes happen to be at address 0.
	if err := mem.WriteUint64(IDTAddr, 0); err != nil {
		return cpuTables{}, fmt.Errorf("write IDT: %w", err)
	}
	if err := mem.Zero(TSSAddr, TSSSize); err != nil {
		return cpuTables{}, fmt.Errorf("write TSS: %w", err)
	}
	return cpuTables{
		gdt:  DescriptorTable{Base: uint64(GDTAddr), Limit: uint16(len(buf) - 1)},
		idt:  DescriptorTable{Base: uint64(IDTAddr), Limit: 7},
		code: g[SelectorCode/8].segment(SelectorCode),
		data: g[SelectorData/8].segment(SelectorData),
		tss:  g[SelectorTSS/8].segment(SelectorTSS),
		// The LDT is never used during boot; this is the state KVM gives
		// LDTR at reset, which passes VMX guest-state checks.
		ldt: Segment{Limit: 0xffff, Type: typeLDT, Present: 1},
	}, nil
}
