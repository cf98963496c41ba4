package vmm

import (
	"fmt"
	"strings"

	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
)

// setEntryState puts the boot vCPU in the state the boot loader asked for.
func setEntryState(c *kvm.VCPU, e *boot.Entry) error {
	sregs, err := c.Sregs()
	if err != nil {
		return err
	}
	sregs.CS, sregs.DS, sregs.ES = e.CS, e.DS, e.ES
	sregs.FS, sregs.GS, sregs.SS = e.FS, e.GS, e.SS
	sregs.TR, sregs.LDT = e.TR, e.LDT
	sregs.GDT, sregs.IDT = e.GDT, e.IDT
	sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER = e.CR0, e.CR3, e.CR4, e.EFER
	if err := c.SetSregs(sregs); err != nil {
		return err
	}
	return c.SetRegs(kvm.Regs{RIP: e.RIP, RSP: e.RSP, RSI: e.RSI, RBX: e.RBX, RFLAGS: e.RFLAGS})
}

// dumpVCPU formats a vCPU's registers and the code bytes at RIP, which is
// what debugging a guest that died in the instruction emulator needs.
func dumpVCPU(c *kvm.VCPU, mem *memory.Memory) string {
	var b strings.Builder
	r, err := c.Regs()
	if err != nil {
		return fmt.Sprintf("  (registers unavailable: %v)", err)
	}
	s, err := c.Sregs()
	if err != nil {
		return fmt.Sprintf("  (segment registers unavailable: %v)", err)
	}
	fmt.Fprintf(&b, "  RIP %016x RSP %016x RFLAGS %016x\n", r.RIP, r.RSP, r.RFLAGS)
	fmt.Fprintf(&b, "  RAX %016x RBX %016x RCX %016x RDX %016x\n", r.RAX, r.RBX, r.RCX, r.RDX)
	fmt.Fprintf(&b, "  RSI %016x RDI %016x RBP %016x\n", r.RSI, r.RDI, r.RBP)
	fmt.Fprintf(&b, "  R8  %016x R9  %016x R10 %016x R11 %016x\n", r.R8, r.R9, r.R10, r.R11)
	fmt.Fprintf(&b, "  R12 %016x R13 %016x R14 %016x R15 %016x\n", r.R12, r.R13, r.R14, r.R15)
	fmt.Fprintf(&b, "  CS %04x (base %x, L %d, DB %d, DPL %d) SS %04x DS %04x\n", s.CS.Selector, s.CS.Base, s.CS.L, s.CS.DB, s.CS.DPL, s.SS.Selector, s.DS.Selector)
	fmt.Fprintf(&b, "  CR0 %016x CR2 %016x CR3 %016x CR4 %016x EFER %x\n", s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
	fmt.Fprintf(&b, "  GDT %x/%x IDT %x/%x", s.GDT.Base, s.GDT.Limit, s.IDT.Base, s.IDT.Limit)
	if pa, ok := translate(mem, s, s.CS.Base+r.RIP); ok {
		code := make([]byte, 16)
		if mem.Read(memory.GuestAddr(pa), code) == nil {
			fmt.Fprintf(&b, "\n  code at RIP (guest-physical %#x): % x", pa, code)
		}
	}
	return b.String()
}

// translate walks the guest's page tables (4-level, as any 64-bit guest
// uses) to find the physical address of a linear address; with paging off
// the address is physical already. Every table read is bounds-checked.
func translate(mem *memory.Memory, s kvm.Sregs, linear uint64) (uint64, bool) {
	const pg = 1 << 31
	if s.CR0&pg == 0 {
		return linear, true
	}
	if s.EFER&(1<<10) == 0 { // not in long mode: 32-bit paging is not walked
		return 0, false
	}
	table := s.CR3 &^ 0xfff
	for level := 3; level >= 0; level-- {
		idx := (linear >> (12 + 9*uint(level))) & 0x1ff
		pte, err := mem.ReadUint64(memory.GuestAddr(table + idx*8))
		if err != nil || pte&1 == 0 {
			return 0, false
		}
		addr := pte & 0x000f_ffff_ffff_f000
		if level > 0 && level < 3 && pte&(1<<7) != 0 { // 1 GiB or 2 MiB page
			size := uint64(1) << (12 + 9*uint(level))
			return addr&^(size-1) | linear&(size-1), true
		}
		if level == 0 {
			return addr | linear&0xfff, true
		}
		table = addr
	}
	return 0, false
}
