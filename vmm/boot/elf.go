package boot

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/voltvmm/volt/vmm/memory"
)

// ELF as far as loading a vmlinux needs: the file header, program headers,
// PT_LOAD segments and the notes that carry the PVH entry point. Section
// headers are never read, so stripped images load the same. 64-bit images
// boot through PVH or their 64-bit entry; 32-bit images (which QEMU boots
// too: the PVH entry is 32-bit anyway) boot through PVH only.

const (
	elfHeaderSize   = 64
	elfPhdrSize     = 56
	elf32HeaderSize = 52
	elf32PhdrSize   = 32
	// elfMaxPhdrs bounds the program-header table we read; vmlinux has
	// about five, and a fuzzed header must not make us allocate megabytes.
	elfMaxPhdrs = 256
	// elfMaxNote bounds a PT_NOTE segment we scan (vmlinux's are < 4 KiB).
	elfMaxNote = 64 << 10

	elfClass32      = 1
	elfClass64      = 2
	elfDataLSB      = 1
	elfMachine386   = 3
	elfMachineX8664 = 62

	ptLoad = 1
	ptNote = 4

	// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY from Xen's
	// public/elfnote.h: the 32-bit physical PVH entry point.
	xenElfnotePhys32Entry = 18
)

// segment is a PT_LOAD program header, in physical terms.
type segment struct {
	index   int
	fileOff uint64
	paddr   uint64
	filesz  uint64
	memsz   uint64
}

func (s segment) end() uint64 { return s.paddr + s.memsz }

// elfImage is a parsed vmlinux.
type elfImage struct {
	class32  bool   // a 32-bit ELF: it has no 64-bit entry, only PVH
	entry    uint64 // e_entry: Linux links it as the physical startup_64
	pvhEntry uint64
	hasPVH   bool
	segments []segment // PT_LOAD with a non-zero memory size, file order
}

func isELF(head []byte) bool {
	return len(head) >= 4 && head[0] == 0x7f && head[1] == 'E' && head[2] == 'L' && head[3] == 'F'
}

// elfFormat is where the fields a loader needs sit in one ELF class.
type elfFormat struct {
	headerSize, phdrSize uint64
	machines             []uint16
	// Offsets (and widths, 4 or 8) of header and program-header fields.
	entry, phoff, phentsize, phnum field
	pType, pOffset, pPaddr         field
	pFilesz, pMemsz                field
}

type field struct{ off, size uint64 }

func (f field) get(b []byte) uint64 {
	if f.size == 2 {
		return uint64(binary.LittleEndian.Uint16(b[f.off:]))
	}
	if f.size == 4 {
		return uint64(binary.LittleEndian.Uint32(b[f.off:]))
	}
	return binary.LittleEndian.Uint64(b[f.off:])
}

var (
	elf64 = elfFormat{
		headerSize: elfHeaderSize, phdrSize: elfPhdrSize, machines: []uint16{elfMachineX8664},
		entry: field{24, 8}, phoff: field{32, 8}, phentsize: field{54, 2}, phnum: field{56, 2},
		pType: field{0, 4}, pOffset: field{8, 8}, pPaddr: field{24, 8}, pFilesz: field{32, 8}, pMemsz: field{40, 8},
	}
	elf32 = elfFormat{
		headerSize: elf32HeaderSize, phdrSize: elf32PhdrSize, machines: []uint16{elfMachine386, elfMachineX8664},
		entry: field{24, 4}, phoff: field{28, 4}, phentsize: field{42, 2}, phnum: field{44, 2},
		pType: field{0, 4}, pOffset: field{4, 4}, pPaddr: field{12, 4}, pFilesz: field{16, 4}, pMemsz: field{20, 4},
	}
)

// parseELF reads and checks the headers; it touches no guest memory.
func parseELF(r io.ReaderAt, size int64) (*elfImage, error) {
	ident, err := readAt(r, size, 0, 16)
	if err != nil {
		return nil, fmt.Errorf("ELF header: %w", err)
	}
	if !isELF(ident) {
		return nil, ErrUnknownFormat
	}
	var f elfFormat
	switch ident[4] {
	case elfClass64:
		f = elf64
	case elfClass32:
		f = elf32
	default:
		return nil, fmt.Errorf("%w: ELF class %d, want 32-bit (1) or 64-bit (2)", ErrUnsupported, ident[4])
	}
	if ident[5] != elfDataLSB {
		return nil, fmt.Errorf("%w: ELF data encoding %d, want little-endian (1)", ErrUnsupported, ident[5])
	}
	h, err := readAt(r, size, 0, f.headerSize)
	if err != nil {
		return nil, fmt.Errorf("ELF header: %w", err)
	}
	if m := binary.LittleEndian.Uint16(h[18:]); !slices.Contains(f.machines, m) {
		return nil, fmt.Errorf("%w: ELF machine %d, want x86 (%d or %d)", ErrUnsupported, m, elfMachine386, elfMachineX8664)
	}
	img := &elfImage{entry: f.entry.get(h), class32: ident[4] == elfClass32}
	phoff := f.phoff.get(h)
	phentsize := f.phentsize.get(h)
	phnum := f.phnum.get(h)
	if phnum == 0 {
		return nil, fmt.Errorf("%w: ELF has no program headers", ErrInvalidImage)
	}
	if phnum > elfMaxPhdrs {
		return nil, fmt.Errorf("%w: ELF has %d program headers, at most %d are accepted", ErrInvalidImage, phnum, elfMaxPhdrs)
	}
	if phentsize < f.phdrSize {
		return nil, fmt.Errorf("%w: ELF program header size %d, want at least %d", ErrInvalidImage, phentsize, f.phdrSize)
	}
	table, err := readAt(r, size, phoff, phentsize*phnum)
	if err != nil {
		return nil, fmt.Errorf("ELF program headers: %w", err)
	}
	for i := range int(phnum) {
		p := table[uint64(i)*phentsize:]
		typ := uint32(f.pType.get(p))
		s := segment{
			index:   i,
			fileOff: f.pOffset.get(p),
			paddr:   f.pPaddr.get(p),
			filesz:  f.pFilesz.get(p),
			memsz:   f.pMemsz.get(p),
		}
		switch typ {
		case ptLoad:
			if s.memsz == 0 {
				continue
			}
			if s.filesz > s.memsz {
				return nil, fmt.Errorf("%w: segment %d has %#x file bytes but only %#x in memory", ErrInvalidImage, i, s.filesz, s.memsz)
			}
			if s.paddr+s.memsz < s.paddr {
				return nil, fmt.Errorf("%w: segment %d at %#x (+%#x) wraps around the address space", ErrInvalidImage, i, s.paddr, s.memsz)
			}
			if s.fileOff > uint64(size) || s.filesz > uint64(size)-s.fileOff {
				return nil, fmt.Errorf("%w: segment %d needs file bytes [%#x, +%#x), file has %#x", ErrTruncated, i, s.fileOff, s.filesz, size)
			}
			img.segments = append(img.segments, s)
		case ptNote:
			if img.hasPVH {
				continue
			}
			if s.filesz > elfMaxNote {
				return nil, fmt.Errorf("%w: note segment %d is %d bytes, at most %d are accepted", ErrInvalidImage, i, s.filesz, elfMaxNote)
			}
			notes, err := readAt(r, size, s.fileOff, s.filesz)
			if err != nil {
				return nil, fmt.Errorf("ELF note segment %d: %w", i, err)
			}
			entry, ok, err := findPVHNote(notes)
			if err != nil {
				return nil, fmt.Errorf("ELF note segment %d: %w", i, err)
			}
			img.pvhEntry, img.hasPVH = entry, ok
		}
	}
	if len(img.segments) == 0 {
		return nil, fmt.Errorf("%w: ELF has no loadable segments", ErrInvalidImage)
	}
	if img.class32 && !img.hasPVH {
		return nil, fmt.Errorf("%w: a 32-bit ELF kernel boots only through PVH, and this one has no PVH entry note", ErrNoPVHNote)
	}
	return img, nil
}

// findPVHNote scans a note segment for Xen's PHYS32_ENTRY note. Linux
// emits its value with _ASM_PTR, so it is 8 bytes in a 64-bit vmlinux and 4
// in others; both are accepted, and the value must be a 32-bit address
// because the CPU enters it in 32-bit mode.
func findPVHNote(b []byte) (uint64, bool, error) {
	le := binary.LittleEndian
	for off := uint64(0); uint64(len(b))-off >= 12; {
		namesz := uint64(le.Uint32(b[off:]))
		descsz := uint64(le.Uint32(b[off+4:]))
		typ := le.Uint32(b[off+8:])
		off += 12
		nameEnd := off + align4(namesz)
		descEnd := nameEnd + align4(descsz)
		if nameEnd > uint64(len(b)) || descEnd > uint64(len(b)) {
			return 0, false, fmt.Errorf("%w: note at %#x runs past its segment", ErrInvalidImage, off-12)
		}
		name := b[off : off+namesz]
		desc := b[nameEnd : nameEnd+descsz]
		off = descEnd
		if typ != xenElfnotePhys32Entry || string(trimNUL(name)) != "Xen" {
			continue
		}
		var entry uint64
		switch descsz {
		case 4:
			entry = uint64(le.Uint32(desc))
		case 8:
			entry = le.Uint64(desc)
		default:
			return 0, false, fmt.Errorf("%w: PVH entry note has a %d-byte value, want 4 or 8", ErrInvalidImage, descsz)
		}
		if entry > 0xffffffff {
			return 0, false, fmt.Errorf("%w: PVH entry %#x is above 4 GiB but is entered in 32-bit mode", ErrInvalidImage, entry)
		}
		return entry, true, nil
	}
	return 0, false, nil
}

// align4 rounds a note field size up; inputs are 32-bit values, so the sum
// cannot overflow.
func align4(n uint64) uint64 { return (n + 3) &^ 3 }

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// check validates the segments against guest RAM and each other, and that
// entry lands inside one of them, before anything is written: a kernel
// that cannot load leaves memory as it was.
func (img *elfImage) check(mem *memory.Memory, entry uint64) error {
	for _, s := range img.segments {
		if s.paddr < uint64(HighMemStart) {
			return fmt.Errorf("%w: segment %d at %#x lies below %#x, over the boot structures", ErrOverlap, s.index, s.paddr, uint64(HighMemStart))
		}
		if !mem.Contains(memory.GuestAddr(s.paddr), s.memsz) {
			return fmt.Errorf("%w: segment %d [%#x, %#x) is outside guest RAM", ErrDoesNotFit, s.index, s.paddr, s.end())
		}
	}
	sorted := slices.Clone(img.segments)
	slices.SortFunc(sorted, func(a, b segment) int {
		switch {
		case a.paddr < b.paddr:
			return -1
		case a.paddr > b.paddr:
			return 1
		}
		return 0
	})
	for i := 1; i < len(sorted); i++ {
		if sorted[i].paddr < sorted[i-1].end() {
			return fmt.Errorf("%w: segments %d and %d both cover %#x", ErrOverlap, sorted[i-1].index, sorted[i].index, sorted[i].paddr)
		}
	}
	for _, s := range img.segments {
		if entry >= s.paddr && entry < s.end() {
			return nil
		}
	}
	return fmt.Errorf("%w: entry point %#x is not inside any loaded segment", ErrInvalidImage, entry)
}

// load copies the segments into guest memory and clears their bss parts
// (memory may be reused, so zero cannot be assumed). It returns the first
// address past the highest segment.
func (img *elfImage) load(mem *memory.Memory, r io.ReaderAt) (memory.GuestAddr, error) {
	var end uint64
	for _, s := range img.segments {
		addr := memory.GuestAddr(s.paddr)
		if err := mem.WriteFrom(addr, io.NewSectionReader(r, int64(s.fileOff), int64(s.filesz)), s.filesz); err != nil {
			return 0, fmt.Errorf("segment %d at %#x: %w", s.index, s.paddr, err)
		}
		if err := mem.Zero(addr+memory.GuestAddr(s.filesz), s.memsz-s.filesz); err != nil {
			return 0, fmt.Errorf("segment %d at %#x: clear bss: %w", s.index, s.paddr, err)
		}
		end = max(end, s.end())
	}
	return memory.GuestAddr(end), nil
}
