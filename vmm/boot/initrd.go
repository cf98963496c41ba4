package boot

import (
	"fmt"
	"io"

	"github.com/voltvmm/volt/vmm/memory"
)

// placeInitrd returns the highest page-aligned address at which size bytes
// end at or below limit and start at or above floor (the end of the kernel).
// High placement is what boot loaders do: it leaves the kernel room to
// relocate and grow upwards.
func placeInitrd(size uint64, floor, limit memory.GuestAddr) (memory.GuestAddr, error) {
	if size > uint64(limit) {
		return 0, fmt.Errorf("%w: initrd of %#x bytes is larger than the %#x bytes below its limit", ErrDoesNotFit, size, uint64(limit))
	}
	addr := alignDown(uint64(limit)-size, memory.PageSize)
	if addr < uint64(floor) {
		return 0, fmt.Errorf("%w: initrd of %#x bytes must end by %#x but would then overlap the kernel, which ends at %#x",
			ErrDoesNotFit, size, uint64(limit), uint64(floor))
	}
	return memory.GuestAddr(addr), nil
}

func loadInitrd(mem *memory.Memory, r io.ReaderAt, size uint64, addr memory.GuestAddr) error {
	if err := mem.WriteFrom(addr, io.NewSectionReader(r, 0, int64(size)), size); err != nil {
		return fmt.Errorf("load initrd at %#x: %w", uint64(addr), err)
	}
	return nil
}
