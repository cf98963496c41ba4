// Package cpu decides what a guest CPU looks like: the CPUID leaves it sees
// (a template applied to what KVM supports), the MSRs and FPU state it boots
// with, and its local APIC wiring.
package cpu

import (
	"fmt"
	"math/bits"
	"sort"
	"strings"

	"github.com/voltvmm/volt/vmm/kvm"
)

// Register names a CPUID output register.
type Register int

const (
	EAX Register = iota
	EBX
	ECX
	EDX
)

// Feature locates one CPUID feature bit.
type Feature struct {
	Leaf, Subleaf uint32
	Reg           Register
	Bit           uint
}

// Features are the bits a template or --cpuid-mask can clear, by the names
// Linux uses in /proc/cpuinfo.
var Features = map[string]Feature{
	"sse3": {1, 0, ECX, 0}, "pclmulqdq": {1, 0, ECX, 1}, "monitor": {1, 0, ECX, 3},
	"vmx": {1, 0, ECX, 5}, "ssse3": {1, 0, ECX, 9}, "fma": {1, 0, ECX, 12},
	"cx16": {1, 0, ECX, 13}, "pcid": {1, 0, ECX, 17}, "sse4_1": {1, 0, ECX, 19},
	"sse4_2": {1, 0, ECX, 20}, "x2apic": {1, 0, ECX, 21}, "movbe": {1, 0, ECX, 22},
	"popcnt": {1, 0, ECX, 23}, "tsc_deadline_timer": {1, 0, ECX, 24}, "aes": {1, 0, ECX, 25},
	"xsave": {1, 0, ECX, 26}, "avx": {1, 0, ECX, 28}, "f16c": {1, 0, ECX, 29},
	"rdrand": {1, 0, ECX, 30},
	"mce":    {1, 0, EDX, 7}, "mtrr": {1, 0, EDX, 12}, "mca": {1, 0, EDX, 14},
	"pat": {1, 0, EDX, 16}, "pse36": {1, 0, EDX, 17}, "clflush": {1, 0, EDX, 19},
	"fsgsbase": {7, 0, EBX, 0}, "bmi1": {7, 0, EBX, 3}, "hle": {7, 0, EBX, 4},
	"avx2": {7, 0, EBX, 5}, "smep": {7, 0, EBX, 7}, "bmi2": {7, 0, EBX, 8},
	"erms": {7, 0, EBX, 9}, "invpcid": {7, 0, EBX, 10}, "rtm": {7, 0, EBX, 11},
	"mpx": {7, 0, EBX, 14}, "avx512f": {7, 0, EBX, 16}, "avx512dq": {7, 0, EBX, 17},
	"rdseed": {7, 0, EBX, 18}, "adx": {7, 0, EBX, 19}, "smap": {7, 0, EBX, 20},
	"avx512ifma": {7, 0, EBX, 21}, "clflushopt": {7, 0, EBX, 23}, "clwb": {7, 0, EBX, 24},
	"avx512cd": {7, 0, EBX, 28}, "sha_ni": {7, 0, EBX, 29}, "avx512bw": {7, 0, EBX, 30},
	"avx512vl":   {7, 0, EBX, 31},
	"avx512vbmi": {7, 0, ECX, 1}, "umip": {7, 0, ECX, 2}, "pku": {7, 0, ECX, 3},
	"waitpkg": {7, 0, ECX, 5}, "avx512_vbmi2": {7, 0, ECX, 6}, "gfni": {7, 0, ECX, 8},
	"vaes": {7, 0, ECX, 9}, "vpclmulqdq": {7, 0, ECX, 10}, "la57": {7, 0, ECX, 16},
	"rdpid": {7, 0, ECX, 22}, "movdiri": {7, 0, ECX, 27}, "movdir64b": {7, 0, ECX, 28},
	"fsrm": {7, 0, EDX, 4}, "md_clear": {7, 0, EDX, 10}, "serialize": {7, 0, EDX, 14},
	"xsaveopt": {0xd, 1, EAX, 0}, "xsavec": {0xd, 1, EAX, 1}, "xgetbv1": {0xd, 1, EAX, 2},
	"xsaves":  {0xd, 1, EAX, 3},
	"lahf_lm": {0x80000001, 0, ECX, 0}, "abm": {0x80000001, 0, ECX, 5}, "sse4a": {0x80000001, 0, ECX, 6},
	"3dnowprefetch": {0x80000001, 0, ECX, 8}, "pdpe1gb": {0x80000001, 0, EDX, 26},
	"rdtscp": {0x80000001, 0, EDX, 27},
	// KVM's paravirtual features (leaf 0x40000001 EAX, named after
	// KVM_FEATURE_* in the kernel's Documentation/virt/kvm/x86/cpuid.rst):
	// the VMM defines this leaf, and a host that does not complete the
	// matching hypercalls (PV IPIs and yields are vmcalls) needs them hidden.
	"kvm_clocksource": {kvmFeatures, 0, EAX, 0}, "kvm_nop_io_delay": {kvmFeatures, 0, EAX, 1},
	"kvm_clocksource2": {kvmFeatures, 0, EAX, 3}, "kvm_async_pf": {kvmFeatures, 0, EAX, 4},
	"kvm_steal_time": {kvmFeatures, 0, EAX, 5}, "kvm_pv_eoi": {kvmFeatures, 0, EAX, 6},
	"kvm_pv_unhalt": {kvmFeatures, 0, EAX, 7}, "kvm_pv_tlb_flush": {kvmFeatures, 0, EAX, 9},
	"kvm_async_pf_vmexit": {kvmFeatures, 0, EAX, 10}, "kvm_pv_send_ipi": {kvmFeatures, 0, EAX, 11},
	"kvm_poll_control": {kvmFeatures, 0, EAX, 12}, "kvm_pv_sched_yield": {kvmFeatures, 0, EAX, 13},
	"kvm_async_pf_int": {kvmFeatures, 0, EAX, 14}, "kvm_msi_ext_dest_id": {kvmFeatures, 0, EAX, 15},
}

// kvmFeatures is KVM's paravirtual feature leaf.
const kvmFeatures = 0x40000001

// Template is a named set of features to hide from the guest, applied on top
// of what KVM supports on this host.
type Template struct {
	Name        string
	Description string
	Mask        []string
}

// Templates lists the built-in CPU templates.
var Templates = map[string]Template{
	"host": {
		Name:        "host",
		Description: "everything KVM supports on this host (the default)",
	},
	"baseline": {
		Name: "baseline",
		Description: "x86-64 baseline: hides extensions newer than SSE3 and the " +
			"supervisor protections (SMAP/SMEP/PKU/UMIP), for guests that must run " +
			"where only baseline instructions are implemented (e.g. under an " +
			"instruction emulator) or migrate between dissimilar hosts",
		Mask: []string{
			"cx16", "popcnt", "sse4_1", "sse4_2", "ssse3", "movbe", "aes", "pclmulqdq",
			"xsave", "avx", "f16c", "fma", "rdrand", "pcid", "x2apic", "tsc_deadline_timer",
			"fsgsbase", "bmi1", "bmi2", "avx2", "hle", "rtm", "mpx", "smep", "smap", "erms",
			"invpcid", "avx512f", "avx512dq", "avx512ifma", "avx512cd", "avx512bw", "avx512vl",
			"avx512vbmi", "avx512_vbmi2", "rdseed", "adx", "clflushopt", "clwb", "sha_ni",
			"umip", "pku", "waitpkg", "gfni", "vaes", "vpclmulqdq", "la57", "rdpid",
			"movdiri", "movdir64b", "fsrm", "serialize", "xsaveopt", "xsavec", "xgetbv1",
			"xsaves", "abm", "sse4a", "3dnowprefetch", "pdpe1gb", "rdtscp",
		},
	},
}

// TemplateNames lists the templates in a stable order, for help texts.
func TemplateNames() []string {
	var n []string
	for k := range Templates {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// ParseMask turns a comma-separated feature list into feature names,
// rejecting names Volt does not know so a typo cannot silently mask nothing.
func ParseMask(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ToLower(f))
		if f == "" {
			continue
		}
		if _, ok := Features[f]; !ok {
			return nil, fmt.Errorf("unknown CPU feature %q (known: %s)", f, strings.Join(featureNames(), ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

func featureNames() []string {
	var n []string
	for k := range Features {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// CPUIDConfig describes the guest's CPUID for one vCPU.
type CPUIDConfig struct {
	Template string
	Mask     []string // extra features to hide
	CPUs     int      // vCPUs in the VM
	APICID   int      // this vCPU's APIC ID
}

// Leaves builds one vCPU's CPUID from the host-supported leaves.
func Leaves(supported []kvm.CPUIDEntry, cfg CPUIDConfig) ([]kvm.CPUIDEntry, error) {
	tmpl, ok := Templates[cfg.Template]
	if cfg.Template == "" {
		tmpl, ok = Templates["host"], true
	}
	if !ok {
		return nil, fmt.Errorf("unknown CPU template %q (known: %s)", cfg.Template, strings.Join(TemplateNames(), ", "))
	}
	if cfg.CPUs < 1 || cfg.APICID < 0 || cfg.APICID >= cfg.CPUs {
		return nil, fmt.Errorf("CPUID for APIC ID %d of %d vCPUs", cfg.APICID, cfg.CPUs)
	}
	out := append([]kvm.CPUIDEntry(nil), supported...)
	masks := append(append([]string(nil), tmpl.Mask...), cfg.Mask...)
	for _, name := range masks {
		f, ok := Features[name]
		if !ok {
			return nil, fmt.Errorf("unknown CPU feature %q", name)
		}
		for i := range out {
			e := &out[i]
			if e.Function == f.Leaf && (e.Index == f.Subleaf || e.Flags&kvm.CPUIDFlagSignificantIndex == 0) {
				*reg(e, f.Reg) &^= 1 << f.Bit
			}
		}
	}
	// Hiding XSAVE also hides everything that depends on it, or a guest
	// would find AVX advertised but unusable.
	if contains(masks, "xsave") {
		for i := range out {
			e := &out[i]
			if e.Function == 1 {
				e.ECX &^= 1<<27 | 1<<28 | 1<<29 | 1<<12 // osxsave, avx, f16c, fma
			}
			if e.Function == 0xd {
				e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
			}
		}
	}
	setTopology(out, cfg.CPUs, cfg.APICID)
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func reg(e *kvm.CPUIDEntry, r Register) *uint32 {
	switch r {
	case EAX:
		return &e.EAX
	case EBX:
		return &e.EBX
	case ECX:
		return &e.ECX
	}
	return &e.EDX
}

// setTopology describes one socket with cfg.CPUs cores, one thread each, in
// both Intel's (leaves 1, 4, 0xb and its successor 0x1f, which guests
// prefer when the host has it) and AMD's (0x80000008, 0x8000001e) terms,
// and marks the CPU as running under a hypervisor.
func setTopology(leaves []kvm.CPUIDEntry, cpus, apicID int) {
	coreBits := uint32(bits.Len(uint(cpus - 1)))
	for i := range leaves {
		e := &leaves[i]
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000ffff | uint32(cpus)<<16 | uint32(apicID)<<24
			e.ECX |= 1 << 31 // hypervisor present
			if cpus > 1 {
				e.EDX |= 1 << 28 // HTT: the logical-count field is valid
			} else {
				e.EDX &^= 1 << 28
			}
		case 4:
			// Cores per package in EAX[31:26]; the cache-sharing field is
			// left as KVM reports it.
			e.EAX = e.EAX&0x03ffffff | uint32(cpus-1)<<26
		case 0x80000008:
			// AMD's core count (NC, ECX[7:0]) and APIC-ID bits per
			// package (ECX[15:12]); without them a guest on an AMD host
			// takes every vCPU for a socket of its own.
			e.ECX = e.ECX&^0xf0ff | coreBits<<12 | uint32(cpus-1)
		case 0x8000001e:
			// Extended APIC ID and core ID; one thread per core, node 0.
			e.EAX = uint32(apicID)
			e.EBX = e.EBX&^0xffff | uint32(apicID)&0xff
			e.ECX &^= 0x7ff
		case 0xb, 0x1f:
			e.EDX = uint32(apicID)
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8
			case 1: // core level
				e.EAX, e.EBX, e.ECX = coreBits, uint32(cpus), 1|2<<8
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		}
	}
}

// MissingFeatures lists the named features set in saved (a snapshot's
// CPUID) that supported (this host's KVM) lacks: a guest that has seen a
// feature may use it at any moment, so restoring it without that feature
// would crash it later in ways hard to trace.
func MissingFeatures(saved, supported []kvm.CPUIDEntry) []string {
	var missing []string
	for _, name := range featureNames() {
		f := Features[name]
		if has(saved, f) && !has(supported, f) {
			missing = append(missing, name)
		}
	}
	return missing
}

func has(leaves []kvm.CPUIDEntry, f Feature) bool {
	for i := range leaves {
		e := leaves[i]
		if e.Function == f.Leaf && (e.Index == f.Subleaf || e.Flags&kvm.CPUIDFlagSignificantIndex == 0) {
			return *reg(&e, f.Reg)&(1<<f.Bit) != 0
		}
	}
	return false
}
