package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

const (
	pageDirectories = IdentityMapSize / (1 << 30) // one PD maps 1 GiB

	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // in a PD entry: maps a 2 MiB page
	hugePage    = 2 << 20
	entries     = 512
)

// writeIdentityPageTables maps [0, IdentityMapSize) 1:1 with 2 MiB pages
// and returns the CR3 value. The 64-bit boot protocol enters the kernel
// with paging on; Linux replaces these tables early, so they only have to
// cover what it touches before that.
func writeIdentityPageTables(mem *memory.Memory) (uint64, error) {
	page := make([]byte, 0x1000)
	binary.LittleEndian.PutUint64(page, uint64(PDPTAddr)|ptePresent|pteWritable)
	if err := mem.Write(PML4Addr, page); err != nil {
		return 0, fmt.Errorf("write PML4: %w", err)
	}
	clear(page)
	for i := range pageDirectories {
		pd := PDAddr + memory.GuestAddr(i*0x1000)
		binary.LittleEndian.PutUint64(page[8*i:], uint64(pd)|ptePresent|pteWritable)
	}
	if err := mem.Write(PDPTAddr, page); err != nil {
		return 0, fmt.Errorf("write PDPT: %w", err)
	}
	for i := range pageDirectories {
		for j := range entries {
			phys := uint64(i*entries+j) * hugePage
			binary.LittleEndian.PutUint64(page[8*j:], phys|ptePresent|pteWritable|ptePageSize)
		}
		pd := PDAddr + memory.GuestAddr(i*0x1000)
		if err := mem.Write(pd, page); err != nil {
			return 0, fmt.Errorf("write page directory %d: %w", i, err)
		}
	}
	return uint64(PML4Addr), nil
}
