package boot

// Control-register and flag bits for the boot vCPU (SDM vol. 3 2.5, 2.2.1).
const (
	cr0PE = 1 << 0  // protected mode
	cr0ET = 1 << 4  // extension type: hard-wired 1 on anything since the 486
	cr0PG = 1 << 31 // paging

	cr4PAE = 1 << 5

	eferLME = 1 << 8
	eferLMA = 1 << 10

	// rflagsReserved is bit 1, which always reads as 1; everything else
	// clear means interrupts off, as both protocols require.
	rflagsReserved = 1 << 1
)

// pvhEntry is the state Xen's PVH ABI specifies: 32-bit protected mode,
// paging off, flat 4 GiB CS (execute/read) and DS/ES/SS (read/write), TR a
// busy 32-bit TSS, EBX the physical address of hvm_start_info.
func pvhEntry(t cpuTables, rip uint64) Entry {
	e := commonEntry(t)
	e.Protocol = ProtocolPVH
	e.RIP = rip
	e.RBX = uint64(PVHStartInfoAddr)
	e.CR0 = cr0PE | cr0ET
	return e
}

// linux64Entry is the state of Linux's 64-bit boot protocol: long mode with
// paging on identity-mapped tables, __BOOT_CS/__BOOT_DS loaded, RSI the
// physical address of boot_params.
func linux64Entry(t cpuTables, rip, cr3 uint64) Entry {
	e := commonEntry(t)
	e.Protocol = ProtocolLinux64
	e.RIP = rip
	e.RSI = uint64(ZeroPageAddr)
	e.CR0 = cr0PE | cr0ET | cr0PG
	e.CR3 = cr3
	e.CR4 = cr4PAE
	e.EFER = eferLME | eferLMA
	return e
}

func commonEntry(t cpuTables) Entry {
	return Entry{
		// Neither protocol promises a stack, but a valid one means a stray
		// push or a fault before the kernel sets its own does not scribble
		// over address 0.
		RSP:    uint64(BootStackPointer),
		RFLAGS: rflagsReserved,
		GDT:    t.gdt,
		IDT:    t.idt,
		CS:     t.code,
		DS:     t.data,
		ES:     t.data,
		FS:     t.data,
		GS:     t.data,
		SS:     t.data,
		TR:     t.tss,
		LDT:    t.ldt,
	}
}
