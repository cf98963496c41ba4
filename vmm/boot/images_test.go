package boot

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

// Synthetic kernels, written byte by byte so that the tests do not depend on
// a toolchain or a real vmlinux.

type elfSeg struct {
	paddr uint64
	data  []byte
	memsz uint64 // 0 means len(data)
}

type elfSpec struct {
	entry    uint64
	pvhEntry uint64 // 0: no PVH note
	pvhSize  int    // 4 or 8; 0 means 8
	segs     []elfSeg
	class32  bool // a 32-bit ELF (i386), as QEMU's PVH boot also takes
}

func buildELF(s elfSpec) []byte {
	le := binary.LittleEndian
	var note []byte
	if s.pvhEntry != 0 {
		size := s.pvhSize
		if size == 0 {
			size = 8
		}
		// A foreign note first, so the scan has to step over one.
		note = appendNote(note, "GNU", 3, []byte{1, 2, 3, 4, 5})
		desc := make([]byte, size)
		if size == 4 {
			le.PutUint32(desc, uint32(s.pvhEntry))
		} else {
			le.PutUint64(desc, s.pvhEntry)
		}
		note = appendNote(note, "Xen", xenElfnotePhys32Entry, desc)
	}
	nph := len(s.segs)
	if note != nil {
		nph++
	}
	f := elf64
	class, machine := byte(elfClass64), uint16(elfMachineX8664)
	if s.class32 {
		f, class, machine = elf32, elfClass32, elfMachine386
	}
	put := func(b []byte, fl field, v uint64) {
		switch fl.size {
		case 2:
			le.PutUint16(b[fl.off:], uint16(v))
		case 4:
			le.PutUint32(b[fl.off:], uint32(v))
		default:
			le.PutUint64(b[fl.off:], v)
		}
	}
	off := f.headerSize + uint64(nph)*f.phdrSize
	h := make([]byte, off)
	copy(h, []byte{0x7f, 'E', 'L', 'F', class, elfDataLSB, 1})
	le.PutUint16(h[16:], 2) // ET_EXEC
	le.PutUint16(h[18:], machine)
	le.PutUint32(h[20:], 1)
	put(h, f.entry, s.entry)
	put(h, f.phoff, f.headerSize)
	put(h, f.phentsize, f.phdrSize)
	put(h, f.phnum, uint64(nph))
	var body []byte
	ph := h[f.headerSize:]
	for i, sg := range s.segs {
		p := ph[uint64(i)*f.phdrSize:]
		memsz := sg.memsz
		if memsz == 0 {
			memsz = uint64(len(sg.data))
		}
		put(p, f.pType, ptLoad)
		put(p, f.pOffset, off+uint64(len(body)))
		put(p, f.pPaddr, sg.paddr)
		put(p, f.pFilesz, uint64(len(sg.data)))
		put(p, f.pMemsz, memsz)
		body = append(body, sg.data...)
		for len(body)%16 != 0 {
			body = append(body, 0)
		}
	}
	if note != nil {
		p := ph[uint64(len(s.segs))*f.phdrSize:]
		put(p, f.pType, ptNote)
		put(p, f.pOffset, off+uint64(len(body)))
		put(p, f.pFilesz, uint64(len(note)))
		put(p, f.pMemsz, uint64(len(note)))
		body = append(body, note...)
	}
	return append(h, body...)
}

func appendNote(b []byte, name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	n := append([]byte(name), 0)
	b = le.AppendUint32(b, uint32(len(n)))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	b = append(b, n...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// pattern returns n bytes that are never all zero and differ by offset, so
// misplaced copies show.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed | 1
	}
	return b
}

type bzSpec struct {
	version     uint16
	setupSects  uint8
	loadflags   uint8
	xloadflags  uint16
	relocatable bool
	alignment   uint32
	pref        uint64
	initSize    uint32
	initrdMax   uint32
	cmdlineSize uint32
	payload     []byte
}

// defaultBz is a relocatable 2.15 kernel that wants to run at 2 MiB, small
// enough for an 8 MiB VM.
func defaultBz() bzSpec {
	return bzSpec{
		version:     0x020f,
		setupSects:  2,
		loadflags:   loadflagLoadedHigh,
		xloadflags:  xloadflagKernel64,
		relocatable: true,
		alignment:   0x200000,
		pref:        0x200000,
		initSize:    0x100000,
		initrdMax:   0x7fffffff,
		cmdlineSize: 2047,
		payload:     pattern(0x3000, 0x42),
	}
}

func buildBzImage(s bzSpec) []byte {
	le := binary.LittleEndian
	sects := int(s.setupSects)
	if sects == 0 {
		sects = defaultSetupSects
	}
	b := make([]byte, (sects+1)*sectorSize)
	b[0], b[1] = 'M', 'Z'
	b[hdrStart] = s.setupSects
	le.PutUint16(b[hdrBootFlag:], bootFlagMagic)
	b[hdrJump] = 0xeb
	b[hdrJump+1] = 0x6a // header ends at 0x26c, as in Linux 6.x
	le.PutUint32(b[hdrMagic:], hdrMagicValue)
	le.PutUint16(b[hdrVersion:], s.version)
	b[hdrLoadflags] = s.loadflags
	le.PutUint32(b[hdrInitrdAddrMax:], s.initrdMax)
	le.PutUint32(b[hdrKernelAlignment:], s.alignment)
	if s.relocatable {
		b[hdrRelocatable] = 1
	}
	le.PutUint16(b[hdrXloadflags:], s.xloadflags)
	le.PutUint32(b[hdrCmdlineSize:], s.cmdlineSize)
	le.PutUint64(b[hdrPrefAddress:], s.pref)
	le.PutUint32(b[hdrInitSize:], s.initSize)
	return append(b, s.payload...)
}

func newMemory(t testing.TB, size uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(memory.Config{Size: size})
	if err != nil {
		t.Fatalf("memory.New(%d): %v", size, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func readMem(t testing.TB, m *memory.Memory, addr memory.GuestAddr, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := m.Read(addr, b); err != nil {
		t.Fatalf("read %#x+%#x: %v", uint64(addr), n, err)
	}
	return b
}

func readCString(t testing.TB, m *memory.Memory, addr memory.GuestAddr, max int) string {
	t.Helper()
	b := readMem(t, m, addr, max)
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	t.Fatalf("no NUL within %d bytes at %#x", max, uint64(addr))
	return ""
}

func cfgFor(image []byte) Config {
	return Config{Kernel: bytes.NewReader(image), KernelSize: int64(len(image)), CPUs: 1}
}

func withInitrd(c Config, initrd []byte) Config {
	c.Initrd = bytes.NewReader(initrd)
	c.InitrdSize = int64(len(initrd))
	return c
}
