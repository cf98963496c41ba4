package cpu

import (
	"encoding/binary"
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
	if e := find(t, l, 0xb, 1); e.EBX != 4 || e.EAX != 2 || e.EDX != 3 {
		t.Errorf("leaf 0xb.1 = %+v", e)
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
