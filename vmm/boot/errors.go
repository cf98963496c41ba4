package boot

import (
	"errors"
	"fmt"
	"io"
)

// Sentinel errors, wrapped with context by Load, for the cases callers
// branch on (errors.Is).
var (
	// ErrUnknownFormat: the kernel is neither an ELF file nor a bzImage.
	ErrUnknownFormat = errors.New("kernel image is neither an ELF vmlinux nor a bzImage")
	// ErrTruncated: the file is shorter than its own headers say.
	ErrTruncated = errors.New("kernel image is truncated")
	// ErrInvalidImage: the headers are recognised but inconsistent.
	ErrInvalidImage = errors.New("invalid kernel image")
	// ErrUnsupported: a well-formed image this loader cannot boot (32-bit,
	// another architecture, a boot protocol older than 2.12).
	ErrUnsupported = errors.New("unsupported kernel image")
	// ErrNoPVHNote: PVH was asked for but the ELF has no
	// XEN_ELFNOTE_PHYS32_ENTRY note.
	ErrNoPVHNote = errors.New("kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
	// ErrDoesNotFit: the kernel or initrd needs memory the VM does not have.
	ErrDoesNotFit = errors.New("does not fit in guest RAM")
	// ErrOverlap: two things Load places would share memory.
	ErrOverlap = errors.New("overlapping guest memory")
)

// readAt reads exactly n bytes at off, checking against the declared size
// first so that a lying header becomes ErrTruncated rather than a short
// read deep in a loop.
func readAt(r io.ReaderAt, size int64, off, n uint64) ([]byte, error) {
	if off > uint64(size) || n > uint64(size)-off {
		return nil, fmt.Errorf("%w: need bytes [%#x, %#x), file has %#x", ErrTruncated, off, off+n, size)
	}
	buf := make([]byte, n)
	got, err := r.ReadAt(buf, int64(off))
	if got == len(buf) {
		return buf, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = ErrTruncated
	}
	return nil, fmt.Errorf("read %d bytes at %#x: %w", n, off, err)
}
