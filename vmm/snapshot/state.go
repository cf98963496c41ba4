// Package snapshot defines Volt's snapshot files and reads and writes them.
//
// A snapshot is two files: the state file (this package's VMState, plain
// data kept apart from live objects) and the memory file (guest RAM, regions
// back to back, sparse: zero pages are holes). The state file is
//
//	magic "VOLTSNAP" | major u16 | minor u16 | reserved u32 | length u64 |
//	SHA-256 of the payload (32 bytes) | payload (JSON)
//
// and is verified (size cap, magic, version, length, checksum) before a
// single byte of the payload is decoded, so a corrupt or truncated file is a
// clear error and never reaches the decoder.
package snapshot

import (
	"github.com/voltvmm/volt/vmm/devices/bootmarker"
	"github.com/voltvmm/volt/vmm/devices/genid"
	"github.com/voltvmm/volt/vmm/devices/i8042"
	"github.com/voltvmm/volt/vmm/devices/uart"
	"github.com/voltvmm/volt/vmm/kvm"
)

// VMState is everything needed to resume a VM except its memory.
type VMState struct {
	Machine Machine
	Memory  MemoryState
	VCPUs   []VCPUState
	IRQChip IRQChipState
	PIT     kvm.PITState
	Clock   kvm.ClockData
	Devices DeviceState
}

// Machine is the VM configuration the snapshot was taken with.
type Machine struct {
	CPUs        int
	MemorySize  uint64
	HugePages   bool
	CPUTemplate string
	CPUIDMask   []string
	// KernelPath and Cmdline are informational: a restored VM does not
	// load a kernel again.
	KernelPath string
	Cmdline    string
	// TrackDirtyPages records whether the VM logged dirty pages, which
	// diff snapshots need.
	TrackDirtyPages bool
}

// MemoryState describes the memory file.
type MemoryState struct {
	Size    uint64
	Regions []Region
	// Diff marks a diff snapshot: the memory file holds only the pages set
	// in DirtyBitmap (one bit per 4 KiB page of the whole memory, in file
	// order) and must be merged onto its base before a restore.
	Diff        bool
	DirtyBitmap []uint64 `json:",omitempty"`
}

// Region is one RAM region: its guest address and where it lies in the
// memory file.
type Region struct {
	Guest      uint64
	Size       uint64
	FileOffset uint64
}

// VCPUState is one vCPU's architectural state, as KVM reports it.
type VCPUState struct {
	ID        int
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	XSave     kvm.XSave
	XCRs      kvm.XCRs
	DebugRegs kvm.DebugRegs
	LAPIC     kvm.LAPIC
	MPState   uint32
	Events    kvm.VCPUEvents
	MSRs      []kvm.MSR
	CPUID     []kvm.CPUIDEntry
	TSCKHz    uint32
}

// IRQChipState is the in-kernel PIC pair and IOAPIC.
type IRQChipState struct {
	PICMaster kvm.IRQChip
	PICSlave  kvm.IRQChip
	IOAPIC    kvm.IRQChip
}

// DeviceState holds every emulated device's state.
type DeviceState struct {
	UART       uart.State
	I8042      i8042.State
	BootMarker bootmarker.State
	GenID      genid.State
}
