// Package memory owns guest physical memory: how it is mapped into the VMM
// (anonymous, huge pages, or a private file mapping for restore) and the
// bounds-checked accessors through which every other package reads and writes
// it. Nothing outside this package indexes the host mapping by a guest
// address, so a bad address from a guest or a file becomes an error, never a
// fault in the VMM.
package memory

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// GuestAddr is a guest physical address. It is a distinct type so that host
// offsets and guest addresses cannot be mixed up silently.
type GuestAddr uint64

// Layout constants for x86: RAM above MMIOGapStart is placed at 4 GiB so
// that the 32-bit MMIO window (LAPIC, IOAPIC, virtio-mmio) stays free.
const (
	PageSize               = 4096
	HugePageSize           = 2 << 20
	MMIOGapStart GuestAddr = 0xC000_0000
	MMIOGapEnd   GuestAddr = 0x1_0000_0000
	// MaxSize bounds a VM's memory so that size arithmetic cannot overflow
	// and a typo cannot ask the host for an absurd mapping.
	MaxSize = 1 << 40
)

// ErrOutOfBounds is returned (wrapped) for any access outside guest RAM.
var ErrOutOfBounds = errors.New("guest address out of bounds")

// Backing selects how guest memory is mapped.
type Backing int

const (
	// Anonymous memory, private to this VMM; pages fault in on first touch.
	Anonymous Backing = iota
	// HugePages maps 2 MiB pages with MAP_HUGETLB, falling back to
	// transparent huge pages when none are reserved.
	HugePages
	// PrivateFile maps a file MAP_PRIVATE: reads fault pages in from the page
	// cache (shared between clones), writes are copied on write.
	PrivateFile
	// ChunkMapped maps a list of files (content-addressed chunks)
	// MAP_PRIVATE|MAP_FIXED at their offsets over anonymous memory: holes
	// stay anonymous zero pages, and clones of different snapshots share
	// the page cache of every chunk they have in common.
	ChunkMapped
)

func (b Backing) String() string {
	switch b {
	case Anonymous:
		return "anonymous"
	case HugePages:
		return "hugepages"
	case PrivateFile:
		return "private-file"
	case ChunkMapped:
		return "chunk-mapped"
	}
	return fmt.Sprintf("backing(%d)", int(b))
}

// Config describes the memory to create.
type Config struct {
	Size    uint64
	Backing Backing
	// File is the file to map for PrivateFile, already opened (and its
	// identity checked) by the caller, so that what was checked is what is
	// mapped. Its first Size bytes are the guest-physical RAM regions in
	// order; it may be longer (a snapshot memory file ends with a trailer).
	// Memory owns it from New on and closes it with Close.
	File *os.File
	// Chunks are the files to map for ChunkMapped, in any order; the gaps
	// between them are zero. Memory owns the files from New on.
	Chunks []Chunk
}

// Chunk is one file mapped at Offset into guest memory (in Mapping()
// order, not a guest address), Length bytes from the file's start.
type Chunk struct {
	Offset, Length uint64
	File           *os.File
}

// Validate checks the configuration without touching the host.
func (c Config) Validate() error {
	if c.Size == 0 {
		return errors.New("memory size must be positive")
	}
	if c.Size%PageSize != 0 {
		return fmt.Errorf("memory size %d is not a multiple of %d", c.Size, PageSize)
	}
	if c.Size > MaxSize {
		return fmt.Errorf("memory size %d MiB exceeds the maximum %d MiB (1 TiB)", c.Size>>20, uint64(MaxSize)>>20)
	}
	if c.Backing == HugePages && c.Size%HugePageSize != 0 {
		return fmt.Errorf("memory size %d is not a multiple of the 2 MiB huge page size", c.Size)
	}
	if c.Backing == PrivateFile && c.File == nil {
		return errors.New("private-file memory needs a file")
	}
	if c.Backing != PrivateFile && c.File != nil {
		return fmt.Errorf("a memory file is only used with %s backing", PrivateFile)
	}
	if c.Backing != ChunkMapped && len(c.Chunks) > 0 {
		return fmt.Errorf("chunks are only used with %s backing", ChunkMapped)
	}
	var prevEnd uint64
	for _, ch := range sortedChunks(c.Chunks) {
		switch {
		case ch.File == nil:
			return fmt.Errorf("chunk at %#x has no file", ch.Offset)
		case ch.Length == 0, ch.Offset%PageSize != 0:
			return fmt.Errorf("chunk at %#x+%#x is not page-aligned or empty", ch.Offset, ch.Length)
		case ch.Offset < prevEnd:
			return fmt.Errorf("chunk at %#x overlaps the one before", ch.Offset)
		case ch.Offset > c.Size || ch.Length > c.Size-ch.Offset:
			return fmt.Errorf("chunk at %#x+%#x runs past the memory's %#x bytes", ch.Offset, ch.Length, c.Size)
		}
		prevEnd = ch.Offset + ch.Length
	}
	return nil
}

func sortedChunks(chunks []Chunk) []Chunk {
	out := slices.Clone(chunks)
	slices.SortFunc(out, func(a, b Chunk) int { return cmp.Compare(a.Offset, b.Offset) })
	return out
}

// Region is one contiguous range of guest RAM and its host mapping.
type Region struct {
	Guest GuestAddr
	// FileOffset is where this region starts within the whole mapping (and
	// within a memory file): regions are laid out back to back.
	FileOffset uint64
	Host       []byte
}

// Size is the region's length in bytes.
func (r Region) Size() uint64 { return uint64(len(r.Host)) }

// End is the first guest address past the region.
func (r Region) End() GuestAddr { return r.Guest + GuestAddr(len(r.Host)) }

// Memory is guest RAM. Its regions never overlap and are sorted by address.
type Memory struct {
	mapping  []byte
	regions  []Region
	backing  Backing
	warnings []string
	// files back a PrivateFile or ChunkMapped mapping, sorted by offset;
	// pages of them the guest never touched are read from here rather than
	// through the mapping.
	files []Chunk
}

// Layout returns the guest-physical RAM ranges for a VM of the given size:
// low memory up to the MMIO gap and the rest from 4 GiB.
func Layout(size uint64) []Range {
	low := size
	if low > uint64(MMIOGapStart) {
		low = uint64(MMIOGapStart)
	}
	ranges := []Range{{Start: 0, Size: low}}
	if size > low {
		ranges = append(ranges, Range{Start: MMIOGapEnd, Size: size - low})
	}
	return ranges
}

// Range is a span of guest-physical addresses.
type Range struct {
	Start GuestAddr
	Size  uint64
}

// End is the first address past the range.
func (r Range) End() GuestAddr { return r.Start + GuestAddr(r.Size) }

// New maps guest memory as configured.
// A Config.File is closed when New fails, as it would be by Close.
func New(cfg Config) (_ *Memory, err error) {
	defer func() {
		if err != nil && cfg.File != nil {
			cfg.File.Close()
		}
		if err != nil {
			for _, ch := range cfg.Chunks {
				if ch.File != nil {
					ch.File.Close()
				}
			}
		}
	}()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Memory{backing: cfg.Backing}
	switch cfg.Backing {
	case Anonymous:
		m.mapping, err = mapAnonymous(cfg.Size, 0)
	case HugePages:
		m.mapping, err = mapAnonymous(cfg.Size, unix.MAP_HUGETLB)
		if err != nil {
			// No reserved huge pages is common; THP still gives 2 MiB
			// mappings where the kernel can find them.
			m.warnings = append(m.warnings, fmt.Sprintf("MAP_HUGETLB failed (%v): falling back to transparent huge pages; reserve pages in /proc/sys/vm/nr_hugepages to avoid this", err))
			m.mapping, err = mapAnonymous(cfg.Size, 0)
			if err == nil {
				if merr := unix.Madvise(m.mapping, unix.MADV_HUGEPAGE); merr != nil {
					m.warnings = append(m.warnings, fmt.Sprintf("madvise(MADV_HUGEPAGE): %v", merr))
				}
			}
		}
	case PrivateFile:
		m.mapping, err = mapPrivateFile(cfg.File, cfg.Size)
		m.files = []Chunk{{Offset: 0, Length: cfg.Size, File: cfg.File}}
	case ChunkMapped:
		m.files = sortedChunks(cfg.Chunks)
		m.mapping, err = mapChunks(m.files, cfg.Size)
	default:
		return nil, fmt.Errorf("unknown memory backing %d", int(cfg.Backing))
	}
	if err != nil {
		return nil, err
	}
	var off uint64
	for _, r := range Layout(cfg.Size) {
		m.regions = append(m.regions, Region{Guest: r.Start, FileOffset: off, Host: m.mapping[off : off+r.Size : off+r.Size]})
		off += r.Size
	}
	return m, nil
}

func mapAnonymous(size uint64, extra int) ([]byte, error) {
	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | extra
	if extra&unix.MAP_HUGETLB == 0 {
		// Overcommit is what lets clones and large idle guests be cheap.
		flags |= unix.MAP_NORESERVE
	}
	// Hugetlb mappings are deliberately reserved up front: with
	// MAP_NORESERVE and an empty pool, mmap succeeds and the first guest
	// touch raises SIGBUS in the VMM.
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of guest memory: %w", size, err)
	}
	return b, nil
}

// mapPrivateFile checks the file's size before mapping it: touching a page
// past the end of a short file would raise SIGBUS in the VMM instead of an
// error here.
func mapPrivateFile(f *os.File, size uint64) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat memory file %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("memory file %s is not a regular file", f.Name())
	}
	if uint64(st.Size) < size {
		return nil, fmt.Errorf("memory file %s holds %d bytes, the VM needs %d", f.Name(), st.Size, size)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("map memory file %s: %w", f.Name(), err)
	}
	return b, nil
}

// mapChunks reserves size bytes of anonymous memory and maps each chunk
// file over its place with MAP_FIXED. Each chunk is a mapping of its own
// (adjacent chunks are different files), so the host's vm.max_map_count
// bounds how many a VM may have; that is checked first, with a message.
func mapChunks(chunks []Chunk, size uint64) ([]byte, error) {
	if limit, err := maxMapCount(); err == nil && len(chunks)*2+64 > limit {
		return nil, fmt.Errorf("%d memory chunks need about %d mappings, more than vm.max_map_count (%d) allows: raise it or use larger chunks", len(chunks), len(chunks)*2, limit)
	}
	b, err := mapAnonymous(size, 0)
	if err != nil {
		return nil, err
	}
	base := reflect.ValueOf(b).Pointer()
	for _, ch := range chunks {
		var st unix.Stat_t
		if err := unix.Fstat(int(ch.File.Fd()), &st); err != nil || uint64(st.Size) < ch.Length {
			unix.Munmap(b)
			return nil, fmt.Errorf("memory chunk %s at %#x is shorter than %d bytes (%v)", ch.File.Name(), ch.Offset, ch.Length, err)
		}
		// A raw mmap: unix.Mmap cannot map at a given address, and
		// unix.MmapPtr takes an unsafe.Pointer, which Volt allows only
		// in vmm/kvm. The address is inside b, which stays mapped.
		_, _, errno := unix.Syscall6(unix.SYS_MMAP, base+uintptr(ch.Offset), uintptr(ch.Length),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE, ch.File.Fd(), 0)
		if errno != 0 {
			unix.Munmap(b)
			return nil, fmt.Errorf("map memory chunk %s at %#x: %w", ch.File.Name(), ch.Offset, errno)
		}
	}
	return b, nil
}

func maxMapCount() (int, error) {
	b, err := os.ReadFile("/proc/sys/vm/max_map_count")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Close unmaps guest memory. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	if m.mapping == nil {
		return nil
	}
	err := unix.Munmap(m.mapping)
	m.mapping, m.regions = nil, nil
	for _, f := range m.files {
		f.File.Close()
	}
	m.files = nil
	if err != nil {
		return fmt.Errorf("unmap guest memory: %w", err)
	}
	return nil
}

// Size is the total RAM in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.mapping)) }

// Backing reports how the memory is mapped.
func (m *Memory) Backing() Backing { return m.backing }

// Warnings lists non-fatal problems met while mapping (e.g. the huge-page
// fallback) for the caller to log.
func (m *Memory) Warnings() []string { return m.warnings }

// Regions returns the RAM regions in address order. The slice is shared;
// callers must not modify it.
func (m *Memory) Regions() []Region { return m.regions }

// Mapping returns the whole host mapping, regions back to back. It is what a
// snapshot writes out and what Regions' FileOffset refers to.
func (m *Memory) Mapping() []byte { return m.mapping }

// Slice returns the host bytes backing [addr, addr+n). The range must lie
// within a single region.
func (m *Memory) Slice(addr GuestAddr, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if addr < r.Guest || addr >= r.End() {
			continue
		}
		off := uint64(addr - r.Guest)
		if n > r.Size()-off {
			return nil, fmt.Errorf("%w: [%#x, +%#x) crosses the end of RAM region at %#x", ErrOutOfBounds, uint64(addr), n, uint64(r.End()))
		}
		return r.Host[off : off+n : off+n], nil
	}
	return nil, fmt.Errorf("%w: %#x (+%#x) is not RAM", ErrOutOfBounds, uint64(addr), n)
}

// Contains reports whether the whole range [addr, addr+n) is RAM in one region.
func (m *Memory) Contains(addr GuestAddr, n uint64) bool {
	_, err := m.Slice(addr, n)
	return err == nil
}

// Read copies len(p) bytes from guest memory at addr.
func (m *Memory) Read(addr GuestAddr, p []byte) error {
	s, err := m.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// Write copies p into guest memory at addr.
func (m *Memory) Write(addr GuestAddr, p []byte) error {
	s, err := m.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// WriteFrom fills [addr, addr+n) from r, for loading images without an
// intermediate copy.
func (m *Memory) WriteFrom(addr GuestAddr, r io.Reader, n uint64) error {
	s, err := m.Slice(addr, n)
	if err != nil {
		return err
	}
	if _, err := io.ReadFull(r, s); err != nil {
		return fmt.Errorf("fill guest memory at %#x: %w", uint64(addr), err)
	}
	return nil
}

// Zero clears [addr, addr+n).
func (m *Memory) Zero(addr GuestAddr, n uint64) error {
	s, err := m.Slice(addr, n)
	if err != nil {
		return err
	}
	clear(s)
	return nil
}

// ReadUint8 and friends access little-endian integers, as x86 guests store them.
func (m *Memory) ReadUint8(addr GuestAddr) (uint8, error) {
	s, err := m.Slice(addr, 1)
	if err != nil {
		return 0, err
	}
	return s[0], nil
}

func (m *Memory) ReadUint16(addr GuestAddr) (uint16, error) {
	s, err := m.Slice(addr, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

func (m *Memory) ReadUint32(addr GuestAddr) (uint32, error) {
	s, err := m.Slice(addr, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

func (m *Memory) ReadUint64(addr GuestAddr) (uint64, error) {
	s, err := m.Slice(addr, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

func (m *Memory) WriteUint8(addr GuestAddr, v uint8) error {
	s, err := m.Slice(addr, 1)
	if err != nil {
		return err
	}
	s[0] = v
	return nil
}

func (m *Memory) WriteUint16(addr GuestAddr, v uint16) error {
	s, err := m.Slice(addr, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

func (m *Memory) WriteUint32(addr GuestAddr, v uint32) error {
	s, err := m.Slice(addr, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

func (m *Memory) WriteUint64(addr GuestAddr, v uint64) error {
	s, err := m.Slice(addr, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}
