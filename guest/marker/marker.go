// Package marker defines Volt's boot-marker convention: a guest announces
// each boot stage by writing one byte to I/O port 0x80. The stage codes follow
// Cloud Hypervisor's ranges (0x40–0x5f kernel, 0x60–0x7f userspace) so that a
// tracer watching kvm:kvm_pio sees the same stages under any VMM.
//
// The table in guest/README.md and guest/probe/marker.h must agree with the
// constants here; TestProbeHeaderMatches checks the header.
package marker

import "fmt"

// Port is the legacy POST/debug port; writes to it are cheap and harmless on
// every x86 machine model.
const Port = 0x80

// Stage is one boot-marker code.
type Stage uint8

// Kernel stages (0x40–0x5f).
const (
	KernelEntry    Stage = 0x40 // first instruction of the guest kernel (probe: PVH entry)
	KernelLongMode Stage = 0x41 // paging and long mode on
	KernelDevices  Stage = 0x42 // platform discovery done (MP table read)
	// KernelPanic is written by our guest kernel's panic path, so that a
	// VMM can tell a panic (and the reset that follows it) from a clean
	// power-off without reading the console.
	KernelPanic Stage = 0x5f
)

// Userspace stages (0x60–0x7f).
const (
	PID1     Stage = 0x60 // PID 1 reached: the first instruction of init
	Ready    Stage = 0x61 // init finished set-up and is ready for work
	Workload Stage = 0x62 // the workload has been started
	Shutdown Stage = 0x6f // init began an orderly power-off
)

var names = map[Stage]string{
	KernelEntry:    "kernel-entry",
	KernelLongMode: "kernel-long-mode",
	KernelDevices:  "kernel-devices",
	KernelPanic:    "kernel-panic",
	PID1:           "pid1",
	Ready:          "ready",
	Workload:       "workload",
	Shutdown:       "shutdown",
}

// String names known stages and prints others as hex, since a guest may write
// any byte to the port.
func (s Stage) String() string {
	if n, ok := names[s]; ok {
		return n
	}
	return fmt.Sprintf("stage-%#02x", uint8(s))
}

// Known reports whether s is one of the defined stages.
func (s Stage) Known() bool {
	_, ok := names[s]
	return ok
}

// IsKernel reports whether s lies in the kernel range.
func (s Stage) IsKernel() bool { return s >= 0x40 && s <= 0x5f }

// IsUserspace reports whether s lies in the userspace range.
func (s Stage) IsUserspace() bool { return s >= 0x60 && s <= 0x7f }

// All returns the defined stages in code order.
func All() []Stage {
	return []Stage{KernelEntry, KernelLongMode, KernelDevices, KernelPanic, PID1, Ready, Workload, Shutdown}
}
