package boot

import "github.com/voltvmm/volt/vmm/memory"

// Guest-physical layout of everything Load writes outside the kernel and
// initrd. All of it sits below 1 MiB so that one rule ("the kernel and initrd
// live at or above HighMemStart") keeps them apart, and the addresses follow
// Firecracker's where there is no reason to differ, so that guest-side
// debugging notes carry over.
//
//	0x0000_0400  BDA (the words at 0x40E and 0x413 are written)
//	0x0000_0500  GDT (6 descriptors)
//	0x0000_0540  IDT (one null gate; interrupts stay off until the kernel loads its own)
//	0x0000_0580  TSS (the 104 bytes TR points at)
//	0x0000_6000  PVH hvm_start_info
//	0x0000_6040  PVH module list (the initrd)
//	0x0000_6100  PVH memory map
//	0x0000_7000  Linux boot_params ("zero page")
//	0x0000_8000  boot stack page, RSP starts at 0x8ff0
//	0x0000_9000  PML4, 0xa000 PDPT, 0xb000-0xefff four page directories
//	0x0002_0000  kernel command line (up to 64 KiB)
//	0x0009_fc00  EBDA: MP floating pointer
//	0x000f_0000  MP configuration table (BIOS area, reserved in the e820)
//	0x0010_0000  kernel (bzImage protected-mode part or ELF segments), then the initrd
const (
	// BDAEBDASegment is the BIOS data area word holding the EBDA's real-mode
	// segment; Linux's MP-table search starts there.
	BDAEBDASegment memory.GuestAddr = 0x40e
	// BDABaseMemKiB is the BDA word with the size of base memory in KiB;
	// Linux reserves everything from there to 1 MiB as firmware area.
	BDABaseMemKiB memory.GuestAddr = 0x413

	GDTAddr memory.GuestAddr = 0x500
	IDTAddr memory.GuestAddr = 0x540
	TSSAddr memory.GuestAddr = 0x580
	// TSSSize is the size of a 32/64-bit TSS without an I/O bitmap.
	TSSSize = 0x68

	PVHStartInfoAddr memory.GuestAddr = 0x6000
	PVHModlistAddr   memory.GuestAddr = 0x6040
	PVHMemmapAddr    memory.GuestAddr = 0x6100

	ZeroPageAddr memory.GuestAddr = 0x7000
	ZeroPageSize                  = 0x1000

	BootStackAddr memory.GuestAddr = 0x8000
	// BootStackPointer leaves 16 bytes below the page end so the first push
	// stays inside the page and the stack is 16-byte aligned as the ABI wants.
	BootStackPointer memory.GuestAddr = 0x8ff0

	PML4Addr memory.GuestAddr = 0x9000
	PDPTAddr memory.GuestAddr = 0xa000
	PDAddr   memory.GuestAddr = 0xb000
	// IdentityMapSize is how much of the address space the boot page tables
	// map 1:1. The 64-bit protocol needs the kernel's init_size range, the
	// zero page and the command line mapped; covering all 4 GiB means any
	// kernel that fits in low RAM is covered, for four pages of tables.
	IdentityMapSize = 4 << 30

	CmdlineAddr memory.GuestAddr = 0x20000
	// CmdlineAreaSize bounds the command line whatever the kernel's
	// cmdline_size says, so it cannot run into the EBDA.
	CmdlineAreaSize = 0x10000

	// EBDAAddr is where guest RAM visible to the kernel ends below 1 MiB
	// (639 KiB, as on PCs). The MP floating pointer lives at its start,
	// where Linux looks for it.
	EBDAAddr memory.GuestAddr = 0x9fc00
	// MPConfigAddr holds the MP configuration table. 254 processor entries
	// take 5 KiB, more than the EBDA's last KiB below 640 KiB can hold, so
	// the table goes to the BIOS area as SeaBIOS puts it; the floating
	// pointer's physptr leads there.
	MPConfigAddr     memory.GuestAddr = 0xf0000
	MPConfigAreaSize                  = 0x10000

	// HighMemStart is the lowest address the kernel and initrd may use;
	// below it are the boot structures and the legacy PC areas.
	HighMemStart memory.GuestAddr = 0x100000

	// IOAPICAddr and LAPICAddr are the architectural default MMIO bases
	// that KVM's in-kernel irqchip emulates.
	IOAPICAddr = 0xfec00000
	LAPICAddr  = 0xfee00000
)

// region names one boot structure's footprint, for the layout test and for
// error messages.
type region struct {
	name string
	addr memory.GuestAddr
	size uint64
}

// bootRegions lists every fixed structure so a test can prove that none
// overlaps another and all lie below HighMemStart.
var bootRegions = []region{
	{"BDA EBDA pointer", BDAEBDASegment, 2},
	{"BDA base memory", BDABaseMemKiB, 2},
	{"GDT", GDTAddr, gdtEntries * 8},
	{"IDT", IDTAddr, 8},
	{"TSS", TSSAddr, TSSSize},
	{"PVH start info", PVHStartInfoAddr, pvhStartInfoSize},
	{"PVH module list", PVHModlistAddr, pvhModlistEntrySize},
	{"PVH memory map", PVHMemmapAddr, maxMemoryMapEntries * pvhMemmapEntrySize},
	{"zero page", ZeroPageAddr, ZeroPageSize},
	{"boot stack", BootStackAddr, 0x1000},
	{"PML4", PML4Addr, 0x1000},
	{"PDPT", PDPTAddr, 0x1000},
	{"page directories", PDAddr, pageDirectories * 0x1000},
	{"command line", CmdlineAddr, CmdlineAreaSize},
	{"MP floating pointer", EBDAAddr, mpFloatingSize},
	{"MP configuration table", MPConfigAddr, MPConfigAreaSize},
}
