package boot

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/voltvmm/volt/vmm/memory"
)

// bzImage per Linux Documentation/arch/x86/boot.rst: real-mode setup
// sectors, then the protected-mode kernel that the 64-bit entry runs. Only
// the protected-mode part goes into guest memory; the setup header goes
// into boot_params.

const (
	sectorSize = 512
	// defaultSetupSects is what setup_sects = 0 means, for compatibility
	// with ancient kernels.
	defaultSetupSects = 4
)

type bzImage struct {
	header      []byte // file bytes [hdrStart, end of header)
	setupSize   uint64 // real-mode part, skipped when loading
	kernelSize  uint64 // protected-mode part
	version     uint16
	relocatable bool
	alignment   uint64
	prefAddress uint64
	initSize    uint64
	// initrdAddrMax is the highest address the initrd may occupy.
	initrdAddrMax uint64
	cmdlineSize   uint64
}

// isBzImage checks the boot sector flag and the "HdrS" magic; an "MZ" at
// the start is only present with the EFI stub, so it is not required.
func isBzImage(head []byte) bool {
	le := binary.LittleEndian
	return len(head) >= hdrMagic+4 &&
		le.Uint16(head[hdrBootFlag:]) == bootFlagMagic &&
		le.Uint32(head[hdrMagic:]) == hdrMagicValue
}

// parseBzImage checks the setup header; it touches no guest memory.
func parseBzImage(r io.ReaderAt, size int64) (*bzImage, error) {
	headLen := min(uint64(size), hdrEndMax)
	head, err := readAt(r, size, 0, headLen)
	if err != nil {
		return nil, fmt.Errorf("bzImage header: %w", err)
	}
	if !isBzImage(head) {
		return nil, ErrUnknownFormat
	}
	if len(head) < hdrEndMin {
		return nil, fmt.Errorf("%w: bzImage of %d bytes ends inside its setup header", ErrTruncated, size)
	}
	le := binary.LittleEndian
	k := &bzImage{version: le.Uint16(head[hdrVersion:])}
	if k.version < protocol2_12 {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d, the 64-bit entry needs 2.12 or later", ErrUnsupported, k.version>>8, k.version&0xff)
	}
	// The jump at 0x200 skips the header, so its displacement is where the
	// header ends.
	hdrEnd := uint64(hdrJump+2) + uint64(head[hdrJump+1])
	if hdrEnd < hdrEndMin {
		return nil, fmt.Errorf("%w: setup header ends at %#x, protocol 2.12 needs it to reach %#x", ErrInvalidImage, hdrEnd, hdrEndMin)
	}
	hdrEnd = min(hdrEnd, hdrEndMax)
	if hdrEnd > uint64(len(head)) {
		return nil, fmt.Errorf("%w: setup header ends at %#x, the file at %#x", ErrTruncated, hdrEnd, size)
	}
	k.header = head[hdrStart:hdrEnd]

	if head[hdrLoadflags]&loadflagLoadedHigh == 0 {
		return nil, fmt.Errorf("%w: LOADED_HIGH is clear (a zImage that wants to load below 1 MiB)", ErrUnsupported)
	}
	if le.Uint16(head[hdrXloadflags:])&xloadflagKernel64 == 0 {
		return nil, fmt.Errorf("%w: no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)", ErrUnsupported)
	}
	sects := uint64(head[hdrStart])
	if sects == 0 {
		sects = defaultSetupSects
	}
	k.setupSize = (sects + 1) * sectorSize
	if k.setupSize >= uint64(size) {
		return nil, fmt.Errorf("%w: %d setup sectors but the file has only %d bytes", ErrTruncated, sects, size)
	}
	k.kernelSize = uint64(size) - k.setupSize
	if k.kernelSize <= kernel64EntryOffset {
		return nil, fmt.Errorf("%w: protected-mode kernel of %d bytes ends before its 64-bit entry at +%#x", ErrTruncated, k.kernelSize, kernel64EntryOffset)
	}

	k.relocatable = head[hdrRelocatable] != 0
	k.alignment = uint64(le.Uint32(head[hdrKernelAlignment:]))
	if k.relocatable && (k.alignment == 0 || k.alignment&(k.alignment-1) != 0) {
		return nil, fmt.Errorf("%w: kernel_alignment %#x is not a power of two", ErrInvalidImage, k.alignment)
	}
	k.prefAddress = le.Uint64(head[hdrPrefAddress:])
	k.initSize = uint64(le.Uint32(head[hdrInitSize:]))
	k.initrdAddrMax = uint64(le.Uint32(head[hdrInitrdAddrMax:]))
	k.cmdlineSize = uint64(le.Uint32(head[hdrCmdlineSize:]))
	return k, nil
}

// place picks the load address and returns it with the end of the memory
// the kernel claims: the decompressor runs at max(load aligned up,
// pref_address) (or at pref_address if not relocatable) and uses init_size
// bytes from there, so that whole range, not just the file, must be RAM and
// stay clear of the initrd.
func (k *bzImage) place(lowEnd memory.GuestAddr) (load, end memory.GuestAddr, err error) {
	// pref_address is the kernel's LOAD_PHYSICAL_ADDR: where it runs
	// even when loaded elsewhere. Below 1 MiB it is meaningless.
	pref := max(k.prefAddress, uint64(HighMemStart))
	if pref >= uint64(lowEnd) {
		return 0, 0, fmt.Errorf("%w: the kernel runs at %#x, low RAM ends at %#x", ErrDoesNotFit, pref, uint64(lowEnd))
	}
	need := max(k.kernelSize, k.initSize)
	l := uint64(HighMemStart)
	if k.relocatable && pref%k.alignment == 0 && need <= uint64(lowEnd)-pref {
		l = pref
	}
	run := pref
	if k.relocatable {
		run = max(alignUp(l, k.alignment), pref)
	}
	e := max(l+k.kernelSize, run+k.initSize)
	if e > uint64(lowEnd) {
		return 0, 0, fmt.Errorf("%w: the kernel needs RAM up to %#x (%#x bytes loaded at %#x, init_size %#x from %#x), low RAM ends at %#x",
			ErrDoesNotFit, e, k.kernelSize, l, k.initSize, run, uint64(lowEnd))
	}
	return memory.GuestAddr(l), memory.GuestAddr(e), nil
}

// load copies the protected-mode kernel to addr.
func (k *bzImage) load(mem *memory.Memory, r io.ReaderAt, addr memory.GuestAddr) error {
	src := io.NewSectionReader(r, int64(k.setupSize), int64(k.kernelSize))
	if err := mem.WriteFrom(addr, src, k.kernelSize); err != nil {
		return fmt.Errorf("protected-mode kernel at %#x: %w", uint64(addr), err)
	}
	return nil
}

// alignUp rounds v up to a power-of-two a; callers keep v far below 2^63.
func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func alignDown(v, a uint64) uint64 { return v &^ (a - 1) }
