package boot

import (
	"slices"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

// TestLayoutDisjoint proves the fixed boot structures never overlap, stay
// below HighMemStart, and each lies wholly in RAM the kernel is told about
// or wholly in the reserved EBDA/BIOS area.
func TestLayoutDisjoint(t *testing.T) {
	rs := slices.Clone(bootRegions)
	slices.SortFunc(rs, func(a, b region) int { return int(a.addr) - int(b.addr) })
	for i, r := range rs {
		end := r.addr + memory.GuestAddr(r.size)
		if end > HighMemStart {
			t.Errorf("%s [%#x, %#x) reaches past %#x", r.name, uint64(r.addr), uint64(end), uint64(HighMemStart))
		}
		if r.addr < EBDAAddr && end > EBDAAddr {
			t.Errorf("%s [%#x, %#x) straddles the EBDA start", r.name, uint64(r.addr), uint64(end))
		}
		if i > 0 {
			prev := rs[i-1]
			if prev.addr+memory.GuestAddr(prev.size) > r.addr {
				t.Errorf("%s and %s overlap", prev.name, r.name)
			}
		}
	}
	if BootStackPointer <= BootStackAddr || BootStackPointer > BootStackAddr+0x1000 || BootStackPointer%16 != 0 {
		t.Errorf("boot stack pointer %#x outside its page or misaligned", uint64(BootStackPointer))
	}
	if mpConfigSize(MaxCPUs) > MPConfigAreaSize {
		t.Errorf("MP table for %d CPUs (%d bytes) exceeds its area", MaxCPUs, mpConfigSize(MaxCPUs))
	}
}

func TestDescriptors(t *testing.T) {
	long, pvh := gdtFor(true), gdtFor(false)
	tests := []struct {
		name string
		got  descriptor
		want uint64
	}{
		{"64-bit code", long[SelectorCode/8], 0x00af9b000000ffff},
		{"32-bit code", pvh[SelectorCode/8], 0x00cf9b000000ffff},
		{"data", long[SelectorData/8], 0x00cf93000000ffff},
		{"TSS", long[SelectorTSS/8], 0x00008b0005800067},
		{"null", long[0], 0},
		{"TSS upper half", long[SelectorTSS/8+1], 0},
	}
	for _, tt := range tests {
		if uint64(tt.got) != tt.want {
			t.Errorf("%s descriptor %#016x, want %#016x", tt.name, uint64(tt.got), tt.want)
		}
	}
	d := makeDescriptor(0x12345678, 0xabcde, typeDataRWAccessed, false, flagDB|flagAVL)
	s := d.segment(0x28)
	want := Segment{Base: 0x12345678, Limit: 0xabcde, Selector: 0x28, Type: 3, Present: 1, S: 1, DB: 1, AVL: 1}
	if s != want {
		t.Errorf("round trip %+v, want %+v", s, want)
	}
}
