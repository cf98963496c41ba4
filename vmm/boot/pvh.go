package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

// PVH start-of-day structures from Xen's
// public/arch-x86/hvm/start_info.h, version 1 (the one with a memory map,
// which Linux needs when there is no hypervisor to ask).
const (
	pvhMagic   = 0x336ec578 // "xEn3" with the 0x80 bit of the "E" set
	pvhVersion = 1

	pvhStartInfoSize    = 56
	pvhModlistEntrySize = 32
	pvhMemmapEntrySize  = 24
)

// span is a placed blob in guest memory; size 0 means absent.
type span struct {
	addr memory.GuestAddr
	size uint64
}

// writePVHStartInfo writes hvm_start_info, the module list (the initrd, if
// any) and the memory map. rsdp_paddr stays 0: there are no ACPI tables, so
// Linux falls back to the MP table.
func writePVHStartInfo(mem *memory.Memory, cmdline memory.GuestAddr, initrd span, mm []MemoryMapEntry) error {
	if len(mm) > maxMemoryMapEntries {
		return fmt.Errorf("PVH memory map: %d entries, room for %d", len(mm), maxMemoryMapEntries)
	}
	le := binary.LittleEndian
	table := make([]byte, len(mm)*pvhMemmapEntrySize)
	for i, e := range mm {
		b := table[i*pvhMemmapEntrySize:]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint64(b[8:], e.Size)
		le.PutUint32(b[16:], uint32(e.Type))
	}
	if err := mem.Write(PVHMemmapAddr, table); err != nil {
		return fmt.Errorf("PVH memory map: %w", err)
	}

	info := make([]byte, pvhStartInfoSize)
	le.PutUint32(info[0:], pvhMagic)
	le.PutUint32(info[4:], pvhVersion)
	if initrd.size > 0 {
		mod := make([]byte, pvhModlistEntrySize)
		le.PutUint64(mod[0:], uint64(initrd.addr))
		le.PutUint64(mod[8:], initrd.size)
		if err := mem.Write(PVHModlistAddr, mod); err != nil {
			return fmt.Errorf("PVH module list: %w", err)
		}
		le.PutUint32(info[12:], 1)
		le.PutUint64(info[16:], uint64(PVHModlistAddr))
	}
	le.PutUint64(info[24:], uint64(cmdline))
	le.PutUint64(info[40:], uint64(PVHMemmapAddr))
	le.PutUint32(info[48:], uint32(len(mm)))
	if err := mem.Write(PVHStartInfoAddr, info); err != nil {
		return fmt.Errorf("PVH start info: %w", err)
	}
	return nil
}
