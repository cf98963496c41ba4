package snapshot

import (
	"errors"
	"fmt"
	"os"

	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm/memory"
)

// WriteMemoryFile writes guest memory (regions back to back) to path,
// leaving zero pages as holes: a freshly booted guest touches a small part
// of its RAM, and holes keep both the file and the page cache of every
// clone small.
func WriteMemoryFile(path string, mapping []byte) error {
	return writeAtomic(path, func(f *os.File) error {
		if err := f.Truncate(int64(len(mapping))); err != nil {
			return err
		}
		return writePages(f, mapping, func(uint64) bool { return true })
	})
}

// WriteDiffMemoryFile writes only the pages set in dirty (one bit per page)
// at their offsets; everything else is a hole. The file has the full size
// so that offsets match the base.
func WriteDiffMemoryFile(path string, mapping []byte, dirty []uint64) error {
	pages := uint64(len(mapping)) / memory.PageSize
	if uint64(len(dirty)) != (pages+63)/64 {
		return fmt.Errorf("dirty bitmap of %d words for %d pages", len(dirty), pages)
	}
	return writeAtomic(path, func(f *os.File) error {
		if err := f.Truncate(int64(len(mapping))); err != nil {
			return err
		}
		return writePages(f, mapping, func(p uint64) bool { return dirty[p/64]&(1<<(p%64)) != 0 })
	})
}

var zeroPage [memory.PageSize]byte

func writePages(f *os.File, mapping []byte, want func(page uint64) bool) error {
	for off := uint64(0); off < uint64(len(mapping)); off += memory.PageSize {
		page := mapping[off : off+memory.PageSize]
		if !want(off/memory.PageSize) || [memory.PageSize]byte(page) == zeroPage {
			continue
		}
		if _, err := f.WriteAt(page, int64(off)); err != nil {
			return err
		}
	}
	return nil
}

// MergeDiff applies a diff snapshot's memory file onto its base memory file
// in place: every page set in dirty is copied from diff (a hole there reads
// as zero, which is what the guest last wrote). Sizes are checked first so
// a mismatched pair is refused before the base is touched.
func MergeDiff(basePath, diffPath string, dirty []uint64) error {
	base, err := hostfile.OpenReadWrite("base memory file", basePath)
	if err != nil {
		return err
	}
	defer base.Close()
	diff, err := hostfile.Open("diff memory file", diffPath)
	if err != nil {
		return err
	}
	defer diff.Close()
	bs, err := base.Stat()
	if err != nil {
		return err
	}
	ds, err := diff.Stat()
	if err != nil {
		return err
	}
	if bs.Size() != ds.Size() {
		return fmt.Errorf("base memory file is %d bytes, diff is %d: not a pair", bs.Size(), ds.Size())
	}
	pages := uint64(bs.Size()) / memory.PageSize
	if uint64(len(dirty)) != (pages+63)/64 {
		return fmt.Errorf("dirty bitmap of %d words for %d pages", len(dirty), pages)
	}
	buf := make([]byte, memory.PageSize)
	for p := range pages {
		if dirty[p/64]&(1<<(p%64)) == 0 {
			continue
		}
		off := int64(p * memory.PageSize)
		if _, err := diff.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read diff page %d: %w", p, err)
		}
		if _, err := base.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write base page %d: %w", p, err)
		}
	}
	if err := base.Sync(); err != nil {
		return fmt.Errorf("sync base memory file: %w", err)
	}
	return nil
}

// MergeDiffSnapshot merges a diff snapshot (state and memory) onto a full
// one: the base memory file is updated in place and the base state file is
// replaced by the diff's state, marked full. After it the base directory
// restores to where the diff was taken.
func MergeDiffSnapshot(baseState, baseMem, diffState, diffMem string) error {
	base, err := ReadStateFile(baseState)
	if err != nil {
		return err
	}
	if base.Memory.Diff {
		return errors.New("the base snapshot is itself a diff snapshot")
	}
	d, err := ReadStateFile(diffState)
	if err != nil {
		return err
	}
	if !d.Memory.Diff {
		return errors.New("the snapshot to merge is not a diff snapshot")
	}
	if d.Memory.Size != base.Memory.Size {
		return fmt.Errorf("diff snapshot has %d bytes of memory, base %d", d.Memory.Size, base.Memory.Size)
	}
	if err := MergeDiff(baseMem, diffMem, d.Memory.DirtyBitmap); err != nil {
		return err
	}
	d.Memory.Diff, d.Memory.DirtyBitmap = false, nil
	return WriteStateFile(baseState, d)
}
