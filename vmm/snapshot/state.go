// Package snapshot defines Volt's snapshot files and reads and writes them.
//
// A snapshot is two files: the state file (this package's VMState, plain
// data kept apart from live objects) and the memory file (guest RAM, regions
// back to back, sparse: zero pages are holes, then one trailer page). The
// state file is
//
//	magic "VOLTSNAP" | major u16 | minor u16 | reserved u32 (zero) |
//	length u64 | SHA-256 of the payload (32 bytes) | payload (JSON)
//
// and is verified (size cap, magic, version, reserved bytes, length,
// checksum) before a single byte of the payload is decoded, so a corrupt or
// truncated file is a clear error and never reaches the decoder. A reader
// takes its own major version and minor versions up to its own; a minor
// version only ever adds fields, and since unknown fields are refused, a
// file of a newer minor version is refused with a message that says so.
//
// The two files are bound to each other: the state records its memory's
// 128-bit ID, and the memory file's trailer carries the same ID, its kind
// (full or diff) and a checksum. A restore reads the trailer (one page)
// before the guest runs, so a memory file from another snapshot, or one
// left by a create or merge that was killed half-way, is refused. The ID is
// not a digest of the memory: hashing gigabytes at every restore would undo
// the point of mapping memory lazily. (Memory kept in the CAS is named by its
// manifest's digest instead.)
package snapshot

import (
	"github.com/voltvmm/volt/vmm/devices/bootmarker"
	"github.com/voltvmm/volt/vmm/devices/genid"
	"github.com/voltvmm/volt/vmm/devices/i8042"
	"github.com/voltvmm/volt/vmm/devices/uart"
	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio/blk"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
	"github.com/voltvmm/volt/vmm/virtio/net"
	"github.com/voltvmm/volt/vmm/virtio/rng"
	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// VMState is everything needed to resume a VM except its memory.
type VMState struct {
	// Format is the version of the file the state was read from; it is
	// not part of the payload.
	Format Version `json:"-"`

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
	Size uint64
	// ID is the identity of this snapshot's memory file, which its trailer
	// repeats.
	ID MemoryID
	// BaseID, in a diff snapshot, is the ID of the snapshot memory the diff
	// applies onto (the VM's previous snapshot, or the snapshot it was
	// restored from); a merge refuses any other base.
	BaseID MemoryID `json:",omitzero"`
	// Manifest, when set, is the digest of the CAS manifest holding the
	// memory (see CreateInCAS); the snapshot then has no memory file.
	Manifest string `json:",omitempty"`
	Regions  []Region
	// Diff marks a diff snapshot: the memory file holds only the pages set
	// in DirtyBitmap (one bit per 4 KiB page of the whole memory, in file
	// order) and must be merged onto its base before a restore.
	Diff        bool
	DirtyBitmap []uint64 `json:",omitempty"`
	// WorkingSet lists, in order, the runs of pages the VM had mapped when
	// the snapshot was taken (memory.Memory.Resident): what a restore
	// prefetches before the guest asks for it. Format 2.1 on; older files
	// have none, and their restores fault every page in on demand.
	WorkingSet []memory.PageRange `json:",omitempty"`
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
	// Virtio holds the virtio-mmio devices, in the order of their slots.
	Virtio []VirtioState `json:",omitempty"`
}

// Kinds of VirtioState.
const (
	VirtioBlock   = "block"
	VirtioNet     = "net"
	VirtioVsock   = "vsock"
	VirtioEntropy = "entropy"
)

// VirtioState is one virtio-mmio device: where it sits, its transport, and
// the state of its kind (exactly one of the kind fields is set).
type VirtioState struct {
	Kind      string
	Name      string
	Base      uint64
	GSI       uint32
	Transport mmio.State
	// Drive says how the disk was opened, to open it again.
	Drive   *DriveState   `json:",omitempty"`
	Block   *blk.State    `json:",omitempty"`
	Net     *net.State    `json:",omitempty"`
	Vsock   *vsock.State  `json:",omitempty"`
	Entropy *EntropyState `json:",omitempty"`
}

// EntropyState is the entropy device and its limit.
type EntropyState struct {
	State     rng.State
	RateLimit ratelimit.Config
}

// DriveState is how a virtio-blk disk was configured.
type DriveState struct {
	ID        string
	Path      string `json:",omitempty"`
	Volume    string `json:",omitempty"` // a CAS volume directory, in CASStore
	CASStore  string `json:",omitempty"`
	ReadOnly  bool
	Root      bool
	PartUUID  string `json:",omitempty"`
	Direct    bool
	RateLimit ratelimit.Config
}
