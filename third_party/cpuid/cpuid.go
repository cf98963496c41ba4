// Package cpuid stands in for github.com/klauspost/cpuid/v2 in Volt's
// builds: the main module's go.mod replaces that module with this
// directory. Its only importer here, github.com/zeebo/blake3, asks two
// questions (AVX2? SSE4.1?) to pick its vector code, and the real package
// answers them from a package initialisation that runs dozens of CPUID
// instructions to fill in hundreds of features. CPUID exits to the
// hypervisor whenever Volt itself runs in a VM, and every volt-vmm start
// paid for that init before main: 0.3-1.5 ms of a 6 ms restore on the
// development machine (docs/performance.md, "What is left between volt-vmm
// and the floor"). golang.org/x/sys/cpu answers both questions, with the
// operating system's XSAVE support checked for AVX2, from the few leaves
// it reads at its own init (~0.05 ms there).
//
// Only the names blake3 uses are provided; a new importer that needs more
// fails to build rather than getting wrong answers.
package cpuid

import "golang.org/x/sys/cpu"

// FeatureID names a CPU feature.
type FeatureID int

// The features blake3 asks about.
const (
	SSE4 FeatureID = iota + 1 // SSE4.1
	AVX2
)

// CPUInfo answers feature questions about the CPU running this process.
type CPUInfo struct{}

// CPU is the running CPU, as in the real package.
var CPU CPUInfo

// Has reports whether the CPU (and, for AVX2, the OS) supports id.
func (CPUInfo) Has(id FeatureID) bool {
	switch id {
	case SSE4:
		return cpu.X86.HasSSE41
	case AVX2:
		return cpu.X86.HasAVX2
	}
	return false
}
