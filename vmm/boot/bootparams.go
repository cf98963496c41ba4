package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

// Offsets in struct boot_params (the "zero page", Linux
// Documentation/arch/x86/zero-page.rst). Setup-header fields are at the same
// offsets in a bzImage file, which is why the header can be copied as bytes.
const (
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8

	hdrStart           = 0x1f1 // setup_sects: the setup header starts here
	hdrVidMode         = 0x1fa
	hdrBootFlag        = 0x1fe
	hdrJump            = 0x200
	hdrMagic           = 0x202
	hdrVersion         = 0x206
	hdrTypeOfLoader    = 0x210
	hdrLoadflags       = 0x211
	hdrRamdiskImage    = 0x218
	hdrRamdiskSize     = 0x21c
	hdrHeapEndPtr      = 0x224
	hdrCmdLinePtr      = 0x228
	hdrInitrdAddrMax   = 0x22c
	hdrKernelAlignment = 0x230
	hdrRelocatable     = 0x234
	hdrXloadflags      = 0x236
	hdrCmdlineSize     = 0x238
	hdrPrefAddress     = 0x258
	hdrInitSize        = 0x260
	// hdrEndMin is the end of init_size, the last field Load reads;
	// protocol 2.12 headers always reach it.
	hdrEndMin = 0x264
	// hdrEndMax is where boot_params' next member (edd_mbr_sig_buffer)
	// starts: a longer header claimed by a file is not copied past it.
	hdrEndMax = 0x290

	bpE820Table     = 0x2d0
	e820EntrySize   = 20
	bootFlagMagic   = 0xaa55
	hdrMagicValue   = 0x53726448 // "HdrS"
	protocol2_12    = 0x020c
	vidModeNormal   = 0xffff
	loaderUndefined = 0xff // type_of_loader for a boot loader without an assigned ID

	loadflagLoadedHigh  = 1 << 0
	loadflagCanUseHeap  = 1 << 7
	xloadflagKernel64   = 1 << 0
	kernel64EntryOffset = 0x200 // 64-bit entry, from the protected-mode load address

	// heapEndPtr is boot.rst's example value (heap end 0xe000, minus the
	// 0x200 the field is defined relative to). The 64-bit entry skips the
	// real-mode setup code that uses the heap; it is set because loaders
	// are expected to, and CAN_USE_HEAP says it is valid.
	heapEndPtr = 0xe000 - 0x200
)

// bootParamsInput is what the zero page describes besides the kernel's own
// header.
type bootParamsInput struct {
	// header is the setup header copied from a bzImage (file bytes from
	// hdrStart), or nil for an ELF kernel, whose header is synthesised.
	header      []byte
	cmdline     memory.GuestAddr
	cmdlineSize uint32 // the limit the line was checked against
	initrd      span
	memoryMap   []MemoryMapEntry
}

// writeBootParams writes boot_params at ZeroPageAddr.
func writeBootParams(mem *memory.Memory, in bootParamsInput) error {
	if len(in.memoryMap) > maxMemoryMapEntries {
		return fmt.Errorf("boot params: %d e820 entries, room for %d", len(in.memoryMap), maxMemoryMapEntries)
	}
	if len(in.header) > hdrEndMax-hdrStart {
		return fmt.Errorf("boot params: setup header of %d bytes exceeds %d", len(in.header), hdrEndMax-hdrStart)
	}
	bp := make([]byte, ZeroPageSize)
	le := binary.LittleEndian
	if in.header != nil {
		copy(bp[hdrStart:], in.header)
		bp[hdrLoadflags] |= loadflagCanUseHeap
		le.PutUint16(bp[hdrHeapEndPtr:], heapEndPtr)
	} else {
		// An ELF vmlinux has no setup header. Fill what the kernel reads
		// on the 64-bit path, claiming protocol 2.12 as Linux itself does
		// when it builds boot_params from PVH start info.
		le.PutUint16(bp[hdrBootFlag:], bootFlagMagic)
		le.PutUint32(bp[hdrMagic:], hdrMagicValue)
		le.PutUint16(bp[hdrVersion:], protocol2_12)
		le.PutUint32(bp[hdrCmdlineSize:], in.cmdlineSize)
	}
	le.PutUint16(bp[hdrVidMode:], vidModeNormal)
	bp[hdrTypeOfLoader] = loaderUndefined

	le.PutUint32(bp[hdrCmdLinePtr:], uint32(in.cmdline))
	le.PutUint32(bp[bpExtCmdLinePtr:], uint32(uint64(in.cmdline)>>32))
	le.PutUint32(bp[hdrRamdiskImage:], uint32(in.initrd.addr))
	le.PutUint32(bp[bpExtRamdiskImage:], uint32(uint64(in.initrd.addr)>>32))
	le.PutUint32(bp[hdrRamdiskSize:], uint32(in.initrd.size))
	le.PutUint32(bp[bpExtRamdiskSize:], uint32(in.initrd.size>>32))

	bp[bpE820Entries] = byte(len(in.memoryMap))
	for i, e := range in.memoryMap {
		b := bp[bpE820Table+i*e820EntrySize:]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint64(b[8:], e.Size)
		le.PutUint32(b[16:], uint32(e.Type))
	}
	if err := mem.Write(ZeroPageAddr, bp); err != nil {
		return fmt.Errorf("boot params: %w", err)
	}
	return nil
}
