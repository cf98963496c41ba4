package boot

import (
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

// translate walks 4-level page tables the way the MMU does, supporting the
// 2 MiB pages writeIdentityPageTables uses (and 4 KiB ones for generality).
func translate(t *testing.T, m *memory.Memory, cr3, va uint64) (uint64, bool) {
	t.Helper()
	const addrMask = 0x000f_ffff_ffff_f000
	table := cr3 & addrMask
	for level, shift := range []uint{39, 30, 21, 12} {
		idx := (va >> shift) & 0x1ff
		e, err := m.ReadUint64(memory.GuestAddr(table + idx*8))
		if err != nil {
			t.Fatalf("level %d table at %#x: %v", level, table, err)
		}
		if e&ptePresent == 0 {
			return 0, false
		}
		if shift == 21 && e&ptePageSize != 0 {
			return e&addrMask&^(hugePage-1) | va&(hugePage-1), true
		}
		if shift == 12 {
			return e&addrMask | va&0xfff, true
		}
		table = e & addrMask
	}
	return 0, false
}

func TestIdentityPageTables(t *testing.T) {
	m := newMemory(t, 16<<20)
	cr3, err := writeIdentityPageTables(m)
	if err != nil {
		t.Fatal(err)
	}
	if cr3 != uint64(PML4Addr) {
		t.Fatalf("CR3 %#x, want %#x", cr3, uint64(PML4Addr))
	}
	tests := []struct {
		va      uint64
		present bool
	}{
		{0, true},
		{0x7000, true},
		{0x1fffff, true},
		{0x200000, true},
		{0x1000200, true},
		{0x3fffffff, true},
		{0x40000000, true}, // past the first GiB
		{0xbfffffff, true}, // end of low RAM
		{0xfee00000, true}, // LAPIC page, in the last GiB below 4 GiB
		{0xffffffff, true},
		{0x100000000, false}, // 4 GiB: not mapped
		{0x7fff_ffff_f000, false},
	}
	for _, tt := range tests {
		pa, ok := translate(t, m, cr3, tt.va)
		if ok != tt.present {
			t.Errorf("%#x: present %v, want %v", tt.va, ok, tt.present)
			continue
		}
		if ok && pa != tt.va {
			t.Errorf("%#x maps to %#x, want identity", tt.va, pa)
		}
	}
	// The tables must lie where the layout says and nothing else.
	pml4 := readMem(t, m, PML4Addr, 4096)
	for i := 8; i < len(pml4); i++ {
		if pml4[i] != 0 {
			t.Fatalf("stray PML4 byte at %d", i)
		}
	}
}
