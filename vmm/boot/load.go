// Package boot puts a Linux kernel (or any kernel speaking the same
// protocols) into guest memory and describes the machine to it: PVH start
// info or Linux boot_params, the memory map, the command line, MP tables,
// and for the 64-bit protocol the GDT and identity page tables. It returns
// the boot vCPU's initial state as plain data; turning that into KVM
// structures is the VMM's job.
//
// Loading (elf.go, bzimage.go, initrd.go) and describing (pvh.go,
// bootparams.go, e820.go, mptable.go, gdt.go, pagetables.go) are separate
// steps joined only by Load. Every guest address is named in layout.go.
package boot

import (
	"errors"
	"fmt"
	"io"

	"github.com/voltvmm/volt/vmm/memory"
)

// Protocol is the boot protocol used to enter the kernel.
type Protocol int

const (
	// ProtocolAuto picks PVH when the ELF has the PVH note, else the Linux
	// 64-bit protocol (bzImage, or an ELF's 64-bit entry).
	ProtocolAuto Protocol = iota
	// ProtocolPVH enters an ELF at its XEN_ELFNOTE_PHYS32_ENTRY in 32-bit
	// mode with hvm_start_info in EBX.
	ProtocolPVH
	// ProtocolLinux64 enters in long mode with boot_params in RSI.
	ProtocolLinux64
)

func (p Protocol) String() string {
	switch p {
	case ProtocolAuto:
		return "auto"
	case ProtocolPVH:
		return "pvh"
	case ProtocolLinux64:
		return "linux64"
	}
	return fmt.Sprintf("protocol(%d)", int(p))
}

// ParseProtocol is the inverse of String, for flags and config files.
func ParseProtocol(s string) (Protocol, error) {
	for _, p := range []Protocol{ProtocolAuto, ProtocolPVH, ProtocolLinux64} {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown boot protocol %q: want auto, pvh or linux64", s)
}

// Config is what to boot.
type Config struct {
	// Kernel is an ELF vmlinux (with or without the PVH note) or a bzImage.
	Kernel     io.ReaderAt
	KernelSize int64
	// Initrd is optional; nil means none.
	Initrd     io.ReaderAt
	InitrdSize int64
	Cmdline    string
	// CPUs is the number of vCPUs the MP table announces, 1..MaxCPUs.
	CPUs     int
	Protocol Protocol
}

// Validate checks the configuration without reading the images.
func (c Config) Validate() error {
	if c.Kernel == nil {
		return errors.New("boot: no kernel image")
	}
	if c.KernelSize <= 0 {
		return fmt.Errorf("boot: kernel size %d must be positive", c.KernelSize)
	}
	if c.Initrd == nil && c.InitrdSize != 0 {
		return fmt.Errorf("boot: initrd size %d given without an initrd", c.InitrdSize)
	}
	if c.Initrd != nil && c.InitrdSize <= 0 {
		return fmt.Errorf("boot: initrd size %d must be positive (pass a nil Initrd for none)", c.InitrdSize)
	}
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return fmt.Errorf("boot: %d vCPUs, want 1..%d", c.CPUs, MaxCPUs)
	}
	switch c.Protocol {
	case ProtocolAuto, ProtocolPVH, ProtocolLinux64:
	default:
		return fmt.Errorf("boot: unknown protocol %d", int(c.Protocol))
	}
	return nil
}

// Entry is the state the boot vCPU must start in.
type Entry struct {
	Protocol Protocol

	RIP, RSP, RSI, RBX, RFLAGS uint64
	CR0, CR3, CR4, EFER        uint64

	GDT, IDT                        DescriptorTable
	CS, DS, ES, FS, GS, SS, TR, LDT Segment

	// KernelEnd is the first byte past the memory the kernel claims: the
	// highest ELF segment end, or for a bzImage the end of its load image
	// or of its init_size area, whichever is higher.
	KernelEnd memory.GuestAddr
}

// Load loads the kernel and initrd into mem and writes every boot structure
// (PVH start info or boot_params, memory map, command line, MP tables, and
// for the 64-bit protocol the GDT and identity page tables), and returns
// the state the boot vCPU must start in.
//
// Images are checked before anything is written, so a kernel that cannot
// boot leaves memory as it was; a failure while writing (an unreadable
// file) can leave it partly written.
func Load(mem *memory.Memory, cfg Config) (*Entry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ram := ramRanges(mem)
	mm, err := MemoryMap(ram)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	lowEnd := ram[0].End()

	head, err := readAt(cfg.Kernel, cfg.KernelSize, 0, min(uint64(cfg.KernelSize), hdrEndMax))
	if err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	switch {
	case isELF(head):
		img, err := parseELF(cfg.Kernel, cfg.KernelSize)
		if err != nil {
			return nil, fmt.Errorf("load kernel: %w", err)
		}
		return loadELF(mem, cfg, img, mm, lowEnd)
	case isBzImage(head):
		if cfg.Protocol == ProtocolPVH {
			return nil, fmt.Errorf("load kernel: %w: a bzImage has no PVH entry; boot the ELF vmlinux for PVH", ErrNoPVHNote)
		}
		img, err := parseBzImage(cfg.Kernel, cfg.KernelSize)
		if err != nil {
			return nil, fmt.Errorf("load kernel: %w", err)
		}
		return loadBzImage(mem, cfg, img, mm, lowEnd)
	}
	return nil, fmt.Errorf("load kernel: %w", ErrUnknownFormat)
}

func loadELF(mem *memory.Memory, cfg Config, img *elfImage, mm []MemoryMapEntry, lowEnd memory.GuestAddr) (*Entry, error) {
	proto := cfg.Protocol
	if proto == ProtocolAuto {
		proto = ProtocolLinux64
		if img.hasPVH {
			proto = ProtocolPVH
		}
	}
	if proto == ProtocolPVH && !img.hasPVH {
		return nil, fmt.Errorf("load kernel: %w", ErrNoPVHNote)
	}
	if proto == ProtocolLinux64 && img.class32 {
		return nil, fmt.Errorf("load kernel: %w: a 32-bit ELF has no 64-bit entry point; boot it through PVH", ErrUnsupported)
	}
	entry := img.entry
	if proto == ProtocolPVH {
		entry = img.pvhEntry
	}
	cmdline := NewCmdline(DefaultCmdlineMax)
	if err := cmdline.AppendRaw(cfg.Cmdline); err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	if err := img.check(mem, entry); err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	var end memory.GuestAddr
	for _, s := range img.segments {
		end = max(end, memory.GuestAddr(s.end()))
	}
	initrd, err := planInitrd(cfg, end, lowEnd)
	if err != nil {
		return nil, err
	}

	if _, err := img.load(mem, cfg.Kernel); err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	if err := writeInitrd(mem, cfg, initrd); err != nil {
		return nil, err
	}
	if err := writeCommon(mem, cfg, cmdline); err != nil {
		return nil, err
	}
	var e Entry
	if proto == ProtocolPVH {
		t, err := writeGDT(mem, false)
		if err != nil {
			return nil, fmt.Errorf("boot: %w", err)
		}
		if err := writePVHStartInfo(mem, CmdlineAddr, initrd, mm); err != nil {
			return nil, fmt.Errorf("boot: %w", err)
		}
		e = pvhEntry(t, entry)
	} else {
		in := bootParamsInput{cmdline: CmdlineAddr, cmdlineSize: DefaultCmdlineMax, initrd: initrd, memoryMap: mm}
		e, err = writeLinux64(mem, in, entry)
		if err != nil {
			return nil, err
		}
	}
	e.KernelEnd = end
	return &e, nil
}

func loadBzImage(mem *memory.Memory, cfg Config, img *bzImage, mm []MemoryMapEntry, lowEnd memory.GuestAddr) (*Entry, error) {
	limit := min(img.cmdlineSize, CmdlineAreaSize-1) // keep room for the NUL
	cmdline := NewCmdline(int(limit))
	if err := cmdline.AppendRaw(cfg.Cmdline); err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	load, end, err := img.place(lowEnd)
	if err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	// initrd_addr_max is the last byte the initrd may occupy.
	initrdLimit := min(memory.GuestAddr(img.initrdAddrMax)+1, lowEnd)
	initrd, err := planInitrd(cfg, end, initrdLimit)
	if err != nil {
		return nil, err
	}

	if err := img.load(mem, cfg.Kernel, load); err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	if err := writeInitrd(mem, cfg, initrd); err != nil {
		return nil, err
	}
	if err := writeCommon(mem, cfg, cmdline); err != nil {
		return nil, err
	}
	in := bootParamsInput{header: img.header, cmdline: CmdlineAddr, cmdlineSize: uint32(limit), initrd: initrd, memoryMap: mm}
	e, err := writeLinux64(mem, in, uint64(load)+kernel64EntryOffset)
	if err != nil {
		return nil, err
	}
	e.KernelEnd = end
	return &e, nil
}

// planInitrd places the initrd, if any, between the kernel's end and limit.
func planInitrd(cfg Config, kernelEnd, limit memory.GuestAddr) (span, error) {
	if cfg.Initrd == nil {
		return span{}, nil
	}
	floor := memory.GuestAddr(alignUp(uint64(kernelEnd), memory.PageSize))
	addr, err := placeInitrd(uint64(cfg.InitrdSize), floor, limit)
	if err != nil {
		return span{}, fmt.Errorf("load initrd: %w", err)
	}
	return span{addr: addr, size: uint64(cfg.InitrdSize)}, nil
}

func writeInitrd(mem *memory.Memory, cfg Config, initrd span) error {
	if initrd.size == 0 {
		return nil
	}
	return loadInitrd(mem, cfg.Initrd, initrd.size, initrd.addr)
}

// writeCommon writes what both protocols share: the command line and the
// MP table.
func writeCommon(mem *memory.Memory, cfg Config, cmdline *Cmdline) error {
	if err := mem.Write(CmdlineAddr, cmdline.bytesZ()); err != nil {
		return fmt.Errorf("boot: write command line: %w", err)
	}
	if err := writeMPTable(mem, cfg.CPUs); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	return nil
}

func writeLinux64(mem *memory.Memory, in bootParamsInput, rip uint64) (Entry, error) {
	if err := writeBootParams(mem, in); err != nil {
		return Entry{}, fmt.Errorf("boot: %w", err)
	}
	t, err := writeGDT(mem, true)
	if err != nil {
		return Entry{}, fmt.Errorf("boot: %w", err)
	}
	cr3, err := writeIdentityPageTables(mem)
	if err != nil {
		return Entry{}, fmt.Errorf("boot: %w", err)
	}
	return linux64Entry(t, rip, cr3), nil
}
