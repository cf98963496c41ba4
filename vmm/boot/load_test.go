package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

const (
	testKernelAddr = 0x200000
	testPVHEntry   = 0x200100
)

func pvhKernel() []byte {
	return buildELF(elfSpec{
		entry:    testKernelAddr,
		pvhEntry: testPVHEntry,
		segs: []elfSeg{
			{paddr: testKernelAddr, data: pattern(0x1800, 1)},
			{paddr: 0x300000, data: pattern(0x100, 2), memsz: 0x2000}, // with bss
		},
	})
}

func TestLoadPVHWritesStartInfoAndEntersAtNote(t *testing.T) {
	m := newMemory(t, 64<<20)
	// Poison the bss so the test sees that Load clears it.
	if err := m.Write(0x300100, bytes.Repeat([]byte{0xff}, 0x100)); err != nil {
		t.Fatal(err)
	}
	initrd := pattern(5000, 9)
	cfg := withInitrd(cfgFor(pvhKernel()), initrd)
	cfg.Cmdline = `console=ttyS0 panic=-1 x="a b"`
	cfg.CPUs = 2
	e, err := Load(m, cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if e.Protocol != ProtocolPVH || e.RIP != testPVHEntry || e.RBX != uint64(PVHStartInfoAddr) {
		t.Errorf("entry protocol %v RIP %#x RBX %#x, want pvh %#x %#x", e.Protocol, e.RIP, e.RBX, testPVHEntry, uint64(PVHStartInfoAddr))
	}
	if e.CR0 != 0x11 || e.CR4 != 0 || e.EFER != 0 || e.CR3 != 0 || e.RFLAGS != 2 {
		t.Errorf("control registers CR0 %#x CR4 %#x EFER %#x CR3 %#x RFLAGS %#x, want 0x11 0 0 0 2", e.CR0, e.CR4, e.EFER, e.CR3, e.RFLAGS)
	}
	wantCS := Segment{Base: 0, Limit: 0xffffffff, Selector: 0x10, Type: 0xb, Present: 1, DB: 1, S: 1, G: 1}
	wantDS := Segment{Base: 0, Limit: 0xffffffff, Selector: 0x18, Type: 0x3, Present: 1, DB: 1, S: 1, G: 1}
	if e.CS != wantCS {
		t.Errorf("CS = %+v, want %+v", e.CS, wantCS)
	}
	for name, s := range map[string]Segment{"DS": e.DS, "ES": e.ES, "SS": e.SS, "FS": e.FS, "GS": e.GS} {
		if s != wantDS {
			t.Errorf("%s = %+v, want %+v", name, s, wantDS)
		}
	}
	if e.TR.Type != 0xb || e.TR.S != 0 || e.TR.Present != 1 || e.TR.Selector != SelectorTSS || e.TR.Base != uint64(TSSAddr) || e.TR.Limit != TSSSize-1 {
		t.Errorf("TR = %+v, want a present busy TSS at %#x", e.TR, uint64(TSSAddr))
	}
	checkGDTMatches(t, m, e)
	if e.KernelEnd != 0x302000 {
		t.Errorf("KernelEnd = %#x, want 0x302000", uint64(e.KernelEnd))
	}

	if got := readMem(t, m, testKernelAddr, 0x1800); !bytes.Equal(got, pattern(0x1800, 1)) {
		t.Error("segment 0 not loaded at its physical address")
	}
	if got := readMem(t, m, 0x300100, 0x1f00); !bytes.Equal(got, make([]byte, 0x1f00)) {
		t.Error("bss of segment 1 not cleared")
	}

	le := binary.LittleEndian
	si := readMem(t, m, PVHStartInfoAddr, pvhStartInfoSize)
	if le.Uint32(si[0:]) != 0x336ec578 || le.Uint32(si[4:]) != 1 {
		t.Fatalf("start info magic %#x version %d", le.Uint32(si[0:]), le.Uint32(si[4:]))
	}
	if got := readCString(t, m, memory.GuestAddr(le.Uint64(si[24:])), 4096); got != cfg.Cmdline {
		t.Errorf("command line %q, want %q", got, cfg.Cmdline)
	}
	if rsdp := le.Uint64(si[32:]); rsdp != 0 {
		t.Errorf("rsdp_paddr = %#x, want 0", rsdp)
	}
	if le.Uint32(si[12:]) != 1 {
		t.Fatalf("nr_modules = %d, want 1", le.Uint32(si[12:]))
	}
	mod := readMem(t, m, memory.GuestAddr(le.Uint64(si[16:])), pvhModlistEntrySize)
	addr, size := le.Uint64(mod[0:]), le.Uint64(mod[8:])
	if size != uint64(len(initrd)) || addr%memory.PageSize != 0 || addr+size > 64<<20 || 64<<20-(addr+size) >= memory.PageSize {
		t.Errorf("initrd module at %#x size %d: want page-aligned, ending in the top page of RAM", addr, size)
	}
	if got := readMem(t, m, memory.GuestAddr(addr), len(initrd)); !bytes.Equal(got, initrd) {
		t.Error("initrd contents differ")
	}

	want, err := MemoryMap(memory.Layout(64 << 20))
	if err != nil {
		t.Fatal(err)
	}
	n := int(le.Uint32(si[48:]))
	if n != len(want) {
		t.Fatalf("memmap_entries = %d, want %d", n, len(want))
	}
	mm := readMem(t, m, memory.GuestAddr(le.Uint64(si[40:])), n*pvhMemmapEntrySize)
	for i, w := range want {
		b := mm[i*pvhMemmapEntrySize:]
		got := MemoryMapEntry{Addr: le.Uint64(b[0:]), Size: le.Uint64(b[8:]), Type: MemType(le.Uint32(b[16:]))}
		if got != w || le.Uint32(b[20:]) != 0 {
			t.Errorf("memmap[%d] = %+v, want %+v", i, got, w)
		}
	}
	checkMPTable(t, m, 2)
}

func TestLoadPVHAcceptsFourByteNote(t *testing.T) {
	m := newMemory(t, 16<<20)
	img := buildELF(elfSpec{entry: testKernelAddr, pvhEntry: testPVHEntry, pvhSize: 4, segs: []elfSeg{{paddr: testKernelAddr, data: pattern(0x400, 3)}}})
	e, err := Load(m, cfgFor(img))
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolPVH || e.RIP != testPVHEntry {
		t.Errorf("protocol %v RIP %#x", e.Protocol, e.RIP)
	}
}

func TestLoad32BitELFBootsThroughPVHOnly(t *testing.T) {
	m := newMemory(t, 16<<20)
	img := buildELF(elfSpec{class32: true, entry: testKernelAddr, pvhEntry: testPVHEntry, pvhSize: 4, segs: []elfSeg{{paddr: testKernelAddr, data: pattern(0x400, 3), memsz: 0x800}}})
	e, err := Load(m, cfgFor(img))
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolPVH || e.RIP != testPVHEntry {
		t.Errorf("protocol %v RIP %#x", e.Protocol, e.RIP)
	}
	if got := readMem(t, m, testKernelAddr, 0x400); !bytes.Equal(got, pattern(0x400, 3)) {
		t.Error("32-bit segment not loaded")
	}
	cfg := cfgFor(img)
	cfg.Protocol = ProtocolLinux64
	if _, err := Load(newMemory(t, 16<<20), cfg); !errors.Is(err, ErrUnsupported) {
		t.Errorf("32-bit ELF through the 64-bit protocol: %v, want ErrUnsupported", err)
	}
	noNote := buildELF(elfSpec{class32: true, entry: testKernelAddr, segs: []elfSeg{{paddr: testKernelAddr, data: pattern(0x400, 3)}}})
	if _, err := Load(newMemory(t, 16<<20), cfgFor(noNote)); !errors.Is(err, ErrNoPVHNote) {
		t.Errorf("32-bit ELF without a PVH note: %v, want ErrNoPVHNote", err)
	}
}

// checkGDTMatches reads the GDT back and decodes the descriptors the
// segment registers name, so registers and memory cannot drift apart.
func checkGDTMatches(t *testing.T, m *memory.Memory, e *Entry) {
	t.Helper()
	if e.GDT.Base != uint64(GDTAddr) {
		t.Fatalf("GDT base %#x", e.GDT.Base)
	}
	g := readMem(t, m, memory.GuestAddr(e.GDT.Base), int(e.GDT.Limit)+1)
	for _, s := range []Segment{e.CS, e.DS, e.SS, e.TR} {
		if int(s.Selector)+8 > len(g) {
			t.Fatalf("selector %#x beyond GDT limit %#x", s.Selector, e.GDT.Limit)
		}
		d := descriptor(binary.LittleEndian.Uint64(g[s.Selector:]))
		if got := d.segment(s.Selector); got != s {
			t.Errorf("GDT entry %#x decodes to %+v, register holds %+v", s.Selector, got, s)
		}
	}
}

func TestLoadELFWithoutNoteUsesLinux64(t *testing.T) {
	m := newMemory(t, 64<<20)
	img := buildELF(elfSpec{entry: testKernelAddr + 0x40, segs: []elfSeg{{paddr: testKernelAddr, data: pattern(0x1000, 4)}}})
	cfg := withInitrd(cfgFor(img), pattern(0x3000, 5))
	cfg.Cmdline = "console=ttyS0"
	e, err := Load(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolLinux64 || e.RIP != testKernelAddr+0x40 || e.RSI != uint64(ZeroPageAddr) {
		t.Errorf("protocol %v RIP %#x RSI %#x", e.Protocol, e.RIP, e.RSI)
	}
	checkLinux64Entry(t, m, e)
	bp := readMem(t, m, ZeroPageAddr, ZeroPageSize)
	le := binary.LittleEndian
	if le.Uint16(bp[hdrBootFlag:]) != 0xaa55 || le.Uint32(bp[hdrMagic:]) != hdrMagicValue || le.Uint16(bp[hdrVersion:]) != 0x020c {
		t.Error("synthesised setup header lacks boot flag, HdrS or version 2.12")
	}
	if le.Uint32(bp[hdrCmdlineSize:]) != DefaultCmdlineMax {
		t.Errorf("cmdline_size = %d", le.Uint32(bp[hdrCmdlineSize:]))
	}
	checkBootParams(t, m, bp, cfg, 64<<20)
}

// TestLoadForcedLinux64OnPVHKernel: a vmlinux with the PVH note still has
// a 64-bit entry, which Firecracker's default path uses.
func TestLoadForcedLinux64OnPVHKernel(t *testing.T) {
	m := newMemory(t, 16<<20)
	cfg := cfgFor(pvhKernel())
	cfg.Protocol = ProtocolLinux64
	e, err := Load(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolLinux64 || e.RIP != testKernelAddr {
		t.Errorf("protocol %v RIP %#x", e.Protocol, e.RIP)
	}
}

func checkLinux64Entry(t *testing.T, m *memory.Memory, e *Entry) {
	t.Helper()
	if e.CR0&0x80000011 != 0x80000011 || e.CR4&cr4PAE == 0 || e.EFER != eferLME|eferLMA || e.CR3 != uint64(PML4Addr) || e.RFLAGS != 2 {
		t.Errorf("CR0 %#x CR4 %#x EFER %#x CR3 %#x RFLAGS %#x", e.CR0, e.CR4, e.EFER, e.CR3, e.RFLAGS)
	}
	if e.RSP != uint64(BootStackPointer) {
		t.Errorf("RSP %#x", e.RSP)
	}
	wantCS := Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	if e.CS != wantCS {
		t.Errorf("CS = %+v, want %+v", e.CS, wantCS)
	}
	if e.DS.Selector != 0x18 || e.SS.Selector != 0x18 || e.ES.Selector != 0x18 || e.DS.Type != 3 {
		t.Errorf("data segments %+v", e.DS)
	}
	checkGDTMatches(t, m, e)
	for _, a := range []uint64{0, uint64(ZeroPageAddr), e.RIP, uint64(e.KernelEnd) - 1} {
		if got, ok := translate(t, m, e.CR3, a); !ok || got != a {
			t.Errorf("address %#x maps to %#x (present %v), want identity", a, got, ok)
		}
	}
}

// checkBootParams checks the loader-owned zero-page fields.
func checkBootParams(t *testing.T, m *memory.Memory, bp []byte, cfg Config, memSize uint64) {
	t.Helper()
	le := binary.LittleEndian
	if bp[hdrTypeOfLoader] != 0xff || le.Uint16(bp[hdrVidMode:]) != 0xffff {
		t.Errorf("type_of_loader %#x vid_mode %#x", bp[hdrTypeOfLoader], le.Uint16(bp[hdrVidMode:]))
	}
	cl := uint64(le.Uint32(bp[hdrCmdLinePtr:])) | uint64(le.Uint32(bp[bpExtCmdLinePtr:]))<<32
	if got := readCString(t, m, memory.GuestAddr(cl), 4096); got != cfg.Cmdline {
		t.Errorf("command line %q, want %q", got, cfg.Cmdline)
	}
	rd := uint64(le.Uint32(bp[hdrRamdiskImage:])) | uint64(le.Uint32(bp[bpExtRamdiskImage:]))<<32
	rs := uint64(le.Uint32(bp[hdrRamdiskSize:])) | uint64(le.Uint32(bp[bpExtRamdiskSize:]))<<32
	if rs != uint64(cfg.InitrdSize) || rd%memory.PageSize != 0 {
		t.Errorf("ramdisk at %#x size %d, want %d bytes page-aligned", rd, rs, cfg.InitrdSize)
	}
	if rs > 0 {
		want := make([]byte, rs)
		if _, err := cfg.Initrd.ReadAt(want, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readMem(t, m, memory.GuestAddr(rd), int(rs)), want) {
			t.Error("initrd contents differ")
		}
	}
	want, _ := MemoryMap(memory.Layout(memSize))
	if int(bp[bpE820Entries]) != len(want) {
		t.Fatalf("e820_entries = %d, want %d", bp[bpE820Entries], len(want))
	}
	for i, w := range want {
		b := bp[bpE820Table+i*e820EntrySize:]
		got := MemoryMapEntry{Addr: le.Uint64(b[0:]), Size: le.Uint64(b[8:]), Type: MemType(le.Uint32(b[16:]))}
		if got != w {
			t.Errorf("e820[%d] = %+v, want %+v", i, got, w)
		}
	}
}

func TestLoadBzImage(t *testing.T) {
	m := newMemory(t, 64<<20)
	spec := defaultBz()
	spec.pref = 0x1000000
	spec.initSize = 0x800000
	spec.initrdMax = 0x1fffffff
	img := buildBzImage(spec)
	cfg := withInitrd(cfgFor(img), pattern(0x2345, 6))
	cfg.Cmdline = "console=ttyS0 reboot=k"
	cfg.CPUs = 8
	e, err := Load(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolLinux64 || e.RIP != 0x1000200 {
		t.Errorf("protocol %v RIP %#x, want linux64 0x1000200 (pref_address + 0x200)", e.Protocol, e.RIP)
	}
	if e.KernelEnd != 0x1800000 {
		t.Errorf("KernelEnd %#x, want pref + init_size 0x1800000", uint64(e.KernelEnd))
	}
	if got := readMem(t, m, 0x1000000, len(spec.payload)); !bytes.Equal(got, spec.payload) {
		t.Error("protected-mode kernel not at pref_address")
	}
	checkLinux64Entry(t, m, e)
	bp := readMem(t, m, ZeroPageAddr, ZeroPageSize)
	le := binary.LittleEndian
	if le.Uint16(bp[hdrVersion:]) != spec.version || le.Uint64(bp[hdrPrefAddress:]) != spec.pref || le.Uint32(bp[hdrInitSize:]) != spec.initSize {
		t.Error("setup header not copied into boot_params")
	}
	if bp[hdrLoadflags] != loadflagLoadedHigh|loadflagCanUseHeap || le.Uint16(bp[hdrHeapEndPtr:]) != heapEndPtr {
		t.Errorf("loadflags %#x heap_end_ptr %#x", bp[hdrLoadflags], le.Uint16(bp[hdrHeapEndPtr:]))
	}
	if bp[hdrStart-2] != 0 {
		t.Error("sentinel byte at 0x1ef is not zero: the kernel would discard the header")
	}
	checkBootParams(t, m, bp, cfg, 64<<20)
	checkMPTable(t, m, 8)
}

func TestLoadBzImageHonoursInitrdAddrMax(t *testing.T) {
	m := newMemory(t, 64<<20)
	spec := defaultBz()
	spec.initrdMax = 0x00ffffff // last byte at 16 MiB - 1
	cfg := withInitrd(cfgFor(buildBzImage(spec)), pattern(0x1800, 7))
	if _, err := Load(m, cfg); err != nil {
		t.Fatal(err)
	}
	rd := binary.LittleEndian.Uint32(readMem(t, m, ZeroPageAddr+hdrRamdiskImage, 4))
	if rd != 0x1000000-0x2000 {
		t.Errorf("initrd at %#x, want %#x: highest page-aligned spot below initrd_addr_max", rd, 0x1000000-0x2000)
	}
}

func TestLoadBzImageNonRelocatableLoadsAt1MiB(t *testing.T) {
	m := newMemory(t, 32<<20)
	spec := defaultBz()
	spec.relocatable = false
	e, err := Load(m, cfgFor(buildBzImage(spec)))
	if err != nil {
		t.Fatal(err)
	}
	if e.RIP != uint64(HighMemStart)+0x200 {
		t.Errorf("RIP %#x, want %#x", e.RIP, uint64(HighMemStart)+0x200)
	}
	if e.KernelEnd != memory.GuestAddr(spec.pref)+memory.GuestAddr(spec.initSize) {
		t.Errorf("KernelEnd %#x, want pref_address + init_size", uint64(e.KernelEnd))
	}
}

func TestLoadRejects(t *testing.T) {
	pvh := pvhKernel()
	bz := buildBzImage(defaultBz())
	le := binary.LittleEndian
	mutate := func(b []byte, f func([]byte)) []byte {
		c := bytes.Clone(b)
		f(c)
		return c
	}
	bzWith := func(f func(*bzSpec)) []byte {
		s := defaultBz()
		f(&s)
		return buildBzImage(s)
	}
	elfWith := func(segs ...elfSeg) []byte {
		return buildELF(elfSpec{entry: segs[0].paddr, pvhEntry: segs[0].paddr, segs: segs})
	}
	tests := []struct {
		name    string
		image   []byte
		memSize uint64
		cfg     func(*Config)
		want    error
	}{
		{name: "empty-ish", image: []byte{0x7f, 'E'}, want: ErrUnknownFormat},
		{name: "bad magic", image: mutate(pvh, func(b []byte) { b[1] = 'X' }), want: ErrUnknownFormat},
		{name: "bzImage bad boot flag", image: mutate(bz, func(b []byte) { b[hdrBootFlag] = 0 }), want: ErrUnknownFormat},
		{name: "ELF truncated header", image: pvh[:40], want: ErrTruncated},
		{name: "ELF truncated program headers", image: pvh[:elfHeaderSize+10], want: ErrTruncated},
		{name: "ELF truncated segment", image: pvh[:len(pvh)-200], want: ErrTruncated},
		{name: "ELF class 3", image: mutate(pvh, func(b []byte) { b[4] = 3 }), want: ErrUnsupported},
		{name: "64-bit image read as 32-bit", image: mutate(pvh, func(b []byte) { b[4] = elfClass32 }), want: ErrInvalidImage},
		{name: "ELF aarch64", image: mutate(pvh, func(b []byte) { le.PutUint16(b[18:], 183) }), want: ErrUnsupported},
		{name: "segment outside RAM", image: elfWith(elfSeg{paddr: 0x3fff000, data: pattern(0x2000, 1)}), want: ErrDoesNotFit},
		{name: "segment in MMIO gap", image: elfWith(elfSeg{paddr: 0xd0000000, data: pattern(0x100, 1)}), want: ErrDoesNotFit},
		{name: "segment over boot structures", image: elfWith(elfSeg{paddr: 0x7000, data: pattern(0x100, 1)}), want: ErrOverlap},
		{name: "overlapping segments", image: elfWith(elfSeg{paddr: 0x200000, data: pattern(0x1000, 1)}, elfSeg{paddr: 0x200800, data: pattern(0x1000, 2)}), want: ErrOverlap},
		{name: "filesz above memsz", image: elfWith(elfSeg{paddr: 0x200000, data: pattern(0x1000, 1), memsz: 0x10}), want: ErrInvalidImage},
		{name: "entry outside segments", image: buildELF(elfSpec{entry: 0x200000, pvhEntry: 0x900000, segs: []elfSeg{{paddr: 0x200000, data: pattern(0x100, 1)}}}), want: ErrInvalidImage},
		{name: "PVH asked, no note", image: buildELF(elfSpec{entry: 0x200000, segs: []elfSeg{{paddr: 0x200000, data: pattern(0x100, 1)}}}), cfg: func(c *Config) { c.Protocol = ProtocolPVH }, want: ErrNoPVHNote},
		{name: "PVH asked, bzImage", image: bz, cfg: func(c *Config) { c.Protocol = ProtocolPVH }, want: ErrNoPVHNote},
		{name: "PVH command line over limit", image: pvh, cfg: func(c *Config) { c.Cmdline = string(bytes.Repeat([]byte("a"), DefaultCmdlineMax+1)) }, want: ErrCmdlineTooLong},
		{name: "command line with NUL", image: pvh, cfg: func(c *Config) { c.Cmdline = "a\x00b" }, want: ErrCmdlineInvalid},
		{name: "bzImage command line over cmdline_size", image: bzWith(func(s *bzSpec) { s.cmdlineSize = 10 }), cfg: func(c *Config) { c.Cmdline = "console=ttyS0" }, want: ErrCmdlineTooLong},
		{name: "initrd too big", image: pvh, cfg: func(c *Config) { *c = withInitrd(*c, make([]byte, 63<<20)) }, want: ErrDoesNotFit},
		{name: "bzImage initrd above initrd_addr_max room", image: bzWith(func(s *bzSpec) { s.initrdMax = 0x3fffff }), cfg: func(c *Config) { *c = withInitrd(*c, make([]byte, 0x200000)) }, want: ErrDoesNotFit},
		{name: "bzImage truncated header", image: bz[:0x250], want: ErrTruncated},
		{name: "bzImage ends inside the header it declares", image: bz[:0x269], want: ErrTruncated}, // fuzz crasher: sliced past the file
		{name: "bzImage entry past the image", image: bz[:3*sectorSize+0x100], want: ErrTruncated},  // fuzz crasher
		{name: "bzImage only setup sectors", image: bz[:3*sectorSize], want: ErrTruncated},
		{name: "bzImage protocol 2.11", image: bzWith(func(s *bzSpec) { s.version = 0x020b }), want: ErrUnsupported},
		{name: "bzImage without 64-bit entry", image: bzWith(func(s *bzSpec) { s.xloadflags = 0 }), want: ErrUnsupported},
		{name: "zImage", image: bzWith(func(s *bzSpec) { s.loadflags = 0 }), want: ErrUnsupported},
		{name: "bzImage bad alignment", image: bzWith(func(s *bzSpec) { s.alignment = 0x300000 }), want: ErrInvalidImage},
		{name: "bzImage init_size beyond RAM", image: bzWith(func(s *bzSpec) { s.initSize = 0x4000000 }), want: ErrDoesNotFit},
		{name: "bzImage pref_address beyond RAM", image: bzWith(func(s *bzSpec) { s.pref = 0xffffffffffff0000 }), want: ErrDoesNotFit},
		{name: "RAM below 1 MiB", image: pvh, memSize: 1 << 20, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.memSize
			if size == 0 {
				size = 64 << 20
			}
			m := newMemory(t, size)
			cfg := cfgFor(tt.image)
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			e, err := Load(m, cfg)
			if err == nil {
				t.Fatalf("Load succeeded (%+v), want an error", e)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Load error %q, want %q", err, tt.want)
			}
			t.Logf("%v", err)
			// Rejected images are caught before anything is written.
			if i := firstNonZero(m); i >= 0 {
				t.Errorf("guest memory written at %#x despite the error", i)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	img := pvhKernel()
	base := cfgFor(img)
	bad := []func(*Config){
		func(c *Config) { c.Kernel = nil },
		func(c *Config) { c.KernelSize = 0 },
		func(c *Config) { c.CPUs = 0 },
		func(c *Config) { c.CPUs = MaxCPUs + 1 },
		func(c *Config) { c.Protocol = 7 },
		func(c *Config) { c.InitrdSize = 5 },
		func(c *Config) { c.Initrd = bytes.NewReader(nil) },
	}
	for i, f := range bad {
		c := base
		f(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: Validate accepted %+v", i, c)
		}
	}
	if err := base.Validate(); err != nil {
		t.Errorf("valid config rejected: %v", err)
	}
}

func TestProtocolString(t *testing.T) {
	for _, p := range []Protocol{ProtocolAuto, ProtocolPVH, ProtocolLinux64} {
		got, err := ParseProtocol(p.String())
		if err != nil || got != p {
			t.Errorf("ParseProtocol(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParseProtocol("multiboot"); err == nil {
		t.Error("ParseProtocol accepted multiboot")
	}
}

// firstNonZero returns the offset in the mapping of the first non-zero
// byte, or -1.
func firstNonZero(m *memory.Memory) int { return nonZeroAt(m.Mapping()) }

var zeroChunk = make([]byte, 1<<16)

// nonZeroAt returns the index of the first non-zero byte of b, or -1,
// comparing 64 KiB at a time so that scanning guest memory stays fast.
func nonZeroAt(b []byte) int {
	for off := 0; off < len(b); off += len(zeroChunk) {
		chunk := b[off:min(off+len(zeroChunk), len(b))]
		if !bytes.Equal(chunk, zeroChunk[:len(chunk)]) {
			for i, v := range chunk {
				if v != 0 {
					return off + i
				}
			}
		}
	}
	return -1
}
