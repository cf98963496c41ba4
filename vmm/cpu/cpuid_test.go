package cpu

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/voltvmm/volt/vmm/kvm"
)

func hostLeaves() []kvm.CPUIDEntry {
	return []kvm.CPUIDEntry{
		{Function: 0, EAX: 0xd},
		{Function: 1, ECX: 1<<13 | 1<<23 | 1<<26 | 1<<27 | 1<<28, EDX: 1 << 28, EBX: 0x00010800},
		{Function: 4, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0x121},
		{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 1<<7 | 1<<20 | 1<<5},
		{Function: 0xb, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: 0xb, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex},
		// A host's die level in 0x1f, which the guest must not see.
		{Function: 0x1f, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 1, EBX: 2, ECX: 1 << 8, EDX: 9},
		{Function: 0x1f, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 4, EBX: 16, ECX: 1 | 2<<8, EDX: 9},
		{Function: 0x1f, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 6, EBX: 32, ECX: 2 | 5<<8, EDX: 9},
		{Function: 0xd, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 7},
		{Function: 0xd, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 1},
		{Function: 0x80000008, ECX: 0x7000},
		{Function: 0x8000001e, EBX: 0x0100, ECX: 0x0300},
	}
}

func find(t *testing.T, l []kvm.CPUIDEntry, fn, idx uint32) kvm.CPUIDEntry {
	t.Helper()
	for _, e := range l {
		if e.Function == fn && e.Index == idx {
			return e
		}
	}
	t.Fatalf("leaf %#x.%d missing", fn, idx)
	return kvm.CPUIDEntry{}
}

func TestTemplates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     CPUIDConfig
		leaf    uint32
		reg     Register
		bit     uint
		wantSet bool
	}{
		{"host keeps cx16", CPUIDConfig{CPUs: 1}, 1, ECX, 13, true},
		{"baseline hides cx16", CPUIDConfig{Template: "baseline", CPUs: 1}, 1, ECX, 13, false},
		{"baseline hides popcnt", CPUIDConfig{Template: "baseline", CPUs: 1}, 1, ECX, 23, false},
		{"baseline hides smap", CPUIDConfig{Template: "baseline", CPUs: 1}, 7, EBX, 20, false},
		{"xsave mask hides avx too", CPUIDConfig{Mask: []string{"xsave"}, CPUs: 1}, 1, ECX, 28, false},
		{"mask smep only", CPUIDConfig{Mask: []string{"smep"}, CPUs: 1}, 7, EBX, 7, false},
		{"mask smep keeps smap", CPUIDConfig{Mask: []string{"smep"}, CPUs: 1}, 7, EBX, 20, true},
		{"hypervisor bit set", CPUIDConfig{CPUs: 1}, 1, ECX, 31, true},
		{"no HTT for one CPU", CPUIDConfig{CPUs: 1}, 1, EDX, 28, false},
		{"HTT for two CPUs", CPUIDConfig{CPUs: 2, APICID: 1}, 1, EDX, 28, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Leaves(hostLeaves(), tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			e := find(t, l, tt.leaf, 0)
			got := *reg(&e, tt.reg)&(1<<tt.bit) != 0
			if got != tt.wantSet {
				t.Fatalf("bit %d of leaf %#x reg %d = %v, want %v", tt.bit, tt.leaf, tt.reg, got, tt.wantSet)
			}
		})
	}
}

func TestTopology(t *testing.T) {
	l, err := Leaves(hostLeaves(), CPUIDConfig{CPUs: 4, APICID: 3})
	if err != nil {
		t.Fatal(err)
	}
	if e := find(t, l, 1, 0); e.EBX>>24 != 3 || (e.EBX>>16)&0xff != 4 {
		t.Errorf("leaf 1 EBX = %#x", e.EBX)
	}
	for _, leaf := range []uint32{0xb, 0x1f} {
		if e := find(t, l, leaf, 0); e.EBX != 1 || e.EAX != 0 || e.ECX != 1<<8 || e.EDX != 3 {
			t.Errorf("leaf %#x.0 = %+v, want the SMT level with one thread", leaf, e)
		}
		if e := find(t, l, leaf, 1); e.EBX != 4 || e.EAX != 2 || e.ECX != 1|2<<8 || e.EDX != 3 {
			t.Errorf("leaf %#x.1 = %+v, want the core level with 4 cores", leaf, e)
		}
	}
	if e := find(t, l, 0x1f, 2); e.EAX != 0 || e.EBX != 0 || e.ECX != 2 {
		t.Errorf("leaf 0x1f.2 = %+v: the host's die level reached the guest", e)
	}
	if e := find(t, l, 4, 0); e.EAX>>26 != 3 {
		t.Errorf("leaf 4 EAX = %#x", e.EAX)
	}
	if e := find(t, l, 0x80000008, 0); e.ECX&0xff != 3 || (e.ECX>>12)&0xf != 2 {
		t.Errorf("leaf 0x80000008 ECX = %#x, want NC 3 and 2 APIC-ID bits", e.ECX)
	}
	if e := find(t, l, 0x8000001e, 0); e.EAX != 3 || e.EBX&0xff != 3 || (e.EBX>>8)&0xff != 0 {
		t.Errorf("leaf 0x8000001e = %+v, want APIC ID 3, core 3, one thread per core", e)
	}
}

func TestLeavesRejectsBadConfig(t *testing.T) {
	for _, cfg := range []CPUIDConfig{
		{Template: "nope", CPUs: 1},
		{Mask: []string{"nonsense"}, CPUs: 1},
		{CPUs: 0},
		{CPUs: 2, APICID: 2},
	} {
		if _, err := Leaves(hostLeaves(), cfg); err == nil {
			t.Errorf("Leaves(%+v) accepted", cfg)
		}
	}
}

func TestParseMask(t *testing.T) {
	got, err := ParseMask("CX16, popcnt,,smap")
	if err != nil || len(got) != 3 || got[0] != "cx16" {
		t.Fatalf("ParseMask = %v, %v", got, err)
	}
	if _, err := ParseMask("cx16,warp_drive"); err == nil {
		t.Fatal("unknown feature accepted")
	}
}

func TestTemplatesNameKnownFeatures(t *testing.T) {
	for name, tmpl := range Templates {
		for _, f := range tmpl.Mask {
			if _, ok := Features[f]; !ok {
				t.Errorf("template %s masks unknown feature %q", name, f)
			}
		}
	}
}

func TestWireLocalInterrupts(t *testing.T) {
	var l kvm.LAPIC
	binary.LittleEndian.PutUint32(l.Regs[apicLVT0:], lvtMasked)
	WireLocalInterrupts(&l)
	if v := binary.LittleEndian.Uint32(l.Regs[apicLVT0:]); v != deliveryExtINT {
		t.Errorf("LVT0 = %#x", v)
	}
	if v := binary.LittleEndian.Uint32(l.Regs[apicLVT1:]); v != deliveryNMI {
		t.Errorf("LVT1 = %#x", v)
	}
}

func TestKVMParavirtualFeaturesCanBeHidden(t *testing.T) {
	host := append(hostLeaves(), kvm.CPUIDEntry{Function: 0x40000001, EAX: 1<<3 | 1<<11 | 1<<13})
	l, err := Leaves(host, CPUIDConfig{Mask: []string{"kvm_pv_send_ipi", "kvm_pv_sched_yield"}, CPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if e := find(t, l, 0x40000001, 0); e.EAX != 1<<3 {
		t.Fatalf("KVM feature leaf EAX = %#x, want only kvm_clocksource2 (bit 3) left", e.EAX)
	}
}

func TestMissingFeatures(t *testing.T) {
	withAVX2 := func(on bool) []kvm.CPUIDEntry {
		l := hostLeaves()
		for i := range l {
			if l[i].Function == 7 {
				if on {
					l[i].EBX |= 1 << 5
				} else {
					l[i].EBX &^= 1 << 5
				}
			}
		}
		return l
	}
	tests := []struct {
		name             string
		saved, supported []kvm.CPUIDEntry
		want             []string // exactly these, in any order
	}{
		{"host has what the guest saw", withAVX2(true), withAVX2(true), nil},
		{"the guest saw a feature the host lacks", withAVX2(true), withAVX2(false), []string{"avx2"}},
		{"a feature the guest never saw", withAVX2(false), withAVX2(true), nil},
		// Only leaves 0 and 1 on the host: every leaf-7 and leaf-0xd
		// feature the guest saw is missing, none of leaf 1's.
		{"a leaf the host lacks entirely", withAVX2(true), hostLeaves()[:2], []string{"avx2", "smep", "smap", "xsaveopt"}},
	}
	for _, tt := range tests {
		got := MissingFeatures(tt.saved, tt.supported)
		slices.Sort(got)
		want := slices.Sorted(slices.Values(tt.want))
		if !slices.Equal(got, want) {
			t.Errorf("%s: MissingFeatures = %v, want %v", tt.name, got, want)
		}
	}
}
