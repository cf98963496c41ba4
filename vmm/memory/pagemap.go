package memory

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Bits of a /proc/PID/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
// Without CAP_SYS_ADMIN the frame number reads as zero, but these flags are
// always there.
const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
)

// pagemapBatch is how many entries are read per pread (512 KiB).
const pagemapBatch = 64 << 10

// DataRuns calls fn, in address order, with every run of guest memory that
// may hold data, as offsets into Mapping(), and skips pages that nothing has
// touched. It never touches such a page itself: reading an untouched
// anonymous page maps the shared zero page, and the guest's first write to it
// later is then a copy-on-write that also invalidates KVM's mapping of it —
// which, measured, made every first touch after a snapshot twice as slow.
//
// Which pages were touched comes from /proc/self/pagemap. An untouched page
// of anonymous memory is zero and is skipped; an untouched page of a
// PrivateFile mapping still holds the file's content, which is read from the
// file (its holes skipped) into a scratch buffer, not through the mapping.
// Where pagemap cannot be read, every page is reported (slower, still
// correct). fn must not keep data after it returns.
func (m *Memory) DataRuns(fn func(off uint64, data []byte) error) error {
	var scratch []byte
	err := m.pagemapRuns(func(start, end uint64, touched bool) error {
		if touched {
			return fn(start*PageSize, m.mapping[start*PageSize:end*PageSize])
		}
		if len(m.files) == 0 {
			return nil // untouched anonymous memory is zero
		}
		if scratch == nil {
			scratch = make([]byte, 1<<20)
		}
		return m.fileRuns(start*PageSize, end*PageSize, scratch, fn)
	})
	if errors.Is(err, errNoPagemap) {
		return fn(0, m.mapping)
	}
	return err
}

// fileRuns reads the parts of [start, end) that backing files cover,
// skipping the files' holes, and hands each piece to fn; what no file
// covers is anonymous and, untouched, zero.
func (m *Memory) fileRuns(start, end uint64, scratch []byte, fn func(off uint64, data []byte) error) error {
	for _, f := range m.files {
		lo, hi := max(start, f.Offset), min(end, f.Offset+f.Length)
		if lo >= hi {
			continue
		}
		if err := readFileRange(f.File, f.Offset, lo, hi, scratch, fn); err != nil {
			return err
		}
	}
	return nil
}

// readFileRange hands fn the data of memory range [start, end) of a file
// mapped at base, skipping the file's holes.
func readFileRange(file *os.File, base, start, end uint64, scratch []byte, fn func(off uint64, data []byte) error) error {
	fd := int(file.Fd())
	pos := start - base // from here on, offsets are in the file
	end -= base
	for pos < end {
		data, err := unix.Seek(fd, int64(pos), unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			// A file system without SEEK_DATA: read it all.
			data = int64(pos)
		}
		// Callers work in pages; extents of a file system with smaller
		// blocks are widened to them.
		data &^= PageSize - 1
		if uint64(data) < pos {
			data = int64(pos)
		}
		if uint64(data) >= end {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = int64(end)
		}
		stop := min(uint64(hole), end)
		for off := uint64(data); off < stop; {
			n := min(uint64(len(scratch)), stop-off)
			got, err := file.ReadAt(scratch[:n], int64(off))
			if err != nil && !(errors.Is(err, io.EOF) && uint64(got) == n) {
				return fmt.Errorf("read memory file %s at %#x: %w", file.Name(), off, err)
			}
			if err := fn(base+off, scratch[:n]); err != nil {
				return err
			}
			off += n
		}
		pos = stop
	}
	return nil
}
