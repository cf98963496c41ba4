package kvm

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU. Run must be called from a single OS thread
// (runtime.LockOSThread) for the vCPU's whole life; the other methods that
// change state must be called from that thread too, or while it is not
// running. Kick may be called from anywhere.
type VCPU struct {
	ID  int
	fd  int
	run []byte
	pid int
	// tid is the thread currently inside Run, 0 when none; Kick signals it.
	tid atomic.Int32
}

// Close unmaps kvm_run and closes the vCPU fd.
func (c *VCPU) Close() error {
	if c.fd < 0 {
		return nil
	}
	if c.run != nil {
		unix.Munmap(c.run)
		c.run = nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// Offsets into struct kvm_run (x86_64).
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32
)

// Run enters the guest until the next exit that needs userspace and decodes
// it. A kick (signal or immediate_exit) returns an IntrExit.
func (c *VCPU) Run() (Exit, error) {
	c.tid.Store(int32(unix.Gettid()))
	_, err := ioctlValue(c.fd, kvmRun, 0)
	if err == unix.EINTR || err == unix.EAGAIN {
		return IntrExit{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("KVM_RUN on vCPU %d: %w", c.ID, err)
	}
	return decodeExit(c.run)
}

// SetImmediateExit makes the next KVM_RUN return at once (before entering
// the guest), closing the race between checking for a pause request and a
// kick signal that arrives just before KVM_RUN.
func (c *VCPU) SetImmediateExit(on bool) {
	v := uint8(0)
	if on {
		v = 1
	}
	storeByte(c.run, runImmediateExit, v)
}

// Kick forces a running vCPU out of KVM_RUN: immediate_exit for the window
// before entry, and a signal to the vCPU thread for a guest already running.
// SIGURG is used because the Go runtime already handles it (for goroutine
// preemption) without side effects, and its handler interrupts KVM_RUN with
// EINTR.
func (c *VCPU) Kick() {
	c.SetImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		unix.Tgkill(c.pid, int(tid), unix.SIGURG)
	}
}

// ReleaseThread forgets the thread that ran the vCPU: call it from that
// thread when it stops running the vCPU for good (and before the thread
// ends), so that a later Kick cannot signal a thread that reused its ID.
func (c *VCPU) ReleaseThread() { c.tid.Store(0) }

// Exit is a decoded KVM exit. The concrete types below are the ones a VMM
// handles; Data slices of IOExit and MMIOExit alias kvm_run and are valid
// only until the next Run.
type Exit interface{ Reason() ExitReason }

// IOExit is a port access. For an IN, the handler fills Data; the next Run
// delivers it to the guest. Count > 1 for string instructions: Data holds
// Count*Size bytes.
type IOExit struct {
	Port  uint16
	Size  int
	Count int
	Out   bool
	Data  []byte
}

// MMIOExit is an access to guest-physical memory with no RAM behind it.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// HaltExit: the guest executed HLT (only seen without an in-kernel LAPIC).
type HaltExit struct{}

// ShutdownExit: triple fault; the guest cannot continue.
type ShutdownExit struct{}

// IntrExit: KVM_RUN was interrupted by a signal or immediate_exit.
type IntrExit struct{}

// SystemEventExit: PSCI-style shutdown/reset/crash requests.
type SystemEventExit struct{ Type uint32 }

// InternalErrorExit: KVM could not continue, e.g. an instruction its
// emulator cannot handle (Suberror 1).
type InternalErrorExit struct {
	Suberror uint32
	Data     []uint64
}

// FailEntryExit: hardware refused VM entry (bad guest state).
type FailEntryExit struct {
	HardwareReason uint64
	CPU            uint32
}

// OtherExit is any exit Volt does not decode further.
type OtherExit struct{ Code ExitReason }

func (IOExit) Reason() ExitReason            { return ExitIO }
func (MMIOExit) Reason() ExitReason          { return ExitMMIO }
func (HaltExit) Reason() ExitReason          { return ExitHLT }
func (ShutdownExit) Reason() ExitReason      { return ExitShutdown }
func (IntrExit) Reason() ExitReason          { return ExitIntr }
func (SystemEventExit) Reason() ExitReason   { return ExitSystemEvent }
func (InternalErrorExit) Reason() ExitReason { return ExitInternalError }
func (FailEntryExit) Reason() ExitReason     { return ExitFailEntry }
func (e OtherExit) Reason() ExitReason       { return e.Code }

// decodeExit reads kvm_run. The kernel writes it, but offsets and lengths
// are still checked so a bad value cannot slice outside the page.
func decodeExit(run []byte) (Exit, error) {
	le := binary.LittleEndian
	reason := ExitReason(le.Uint32(run[runExitReason:]))
	u := run[runUnion:]
	switch reason {
	case ExitIO:
		e := IOExit{
			Out:   u[0] == 1,
			Size:  int(u[1]),
			Port:  le.Uint16(u[2:]),
			Count: int(le.Uint32(u[4:])),
		}
		off := le.Uint64(u[8:])
		n := uint64(e.Size) * uint64(e.Count)
		if e.Size == 0 || off > uint64(len(run)) || n > uint64(len(run))-off {
			return nil, fmt.Errorf("KVM_EXIT_IO with data outside kvm_run (offset %d, %d×%d bytes)", off, e.Count, e.Size)
		}
		e.Data = run[off : off+n : off+n]
		return e, nil
	case ExitMMIO:
		n := le.Uint32(u[16:])
		if n > 8 {
			return nil, fmt.Errorf("KVM_EXIT_MMIO of %d bytes", n)
		}
		return MMIOExit{Addr: le.Uint64(u[0:]), Data: u[8 : 8+n : 8+n], Write: u[20] != 0}, nil
	case ExitHLT:
		return HaltExit{}, nil
	case ExitShutdown:
		return ShutdownExit{}, nil
	case ExitIntr:
		return IntrExit{}, nil
	case ExitSystemEvent:
		return SystemEventExit{Type: le.Uint32(u[0:])}, nil
	case ExitInternalError:
		e := InternalErrorExit{Suberror: le.Uint32(u[0:])}
		n := min(le.Uint32(u[4:]), 16)
		for i := range n {
			e.Data = append(e.Data, le.Uint64(u[8+8*i:]))
		}
		return e, nil
	case ExitFailEntry:
		return FailEntryExit{HardwareReason: le.Uint64(u[0:]), CPU: le.Uint32(u[8:])}, nil
	}
	return OtherExit{Code: reason}, nil
}

// Regs reads the general-purpose registers.
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if err := ioctlPtr(c.fd, kvmGetRegs, &r); err != nil {
		return r, fmt.Errorf("KVM_GET_REGS vCPU %d: %w", c.ID, err)
	}
	return r, nil
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r Regs) error {
	if err := ioctlPtr(c.fd, kvmSetRegs, &r); err != nil {
		return fmt.Errorf("KVM_SET_REGS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// Sregs reads the segment and control registers.
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if err := ioctlPtr(c.fd, kvmGetSregs, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_SREGS vCPU %d: %w", c.ID, err)
	}
	return s, nil
}

// SetSregs writes the segment and control registers.
func (c *VCPU) SetSregs(s Sregs) error {
	if err := ioctlPtr(c.fd, kvmSetSregs, &s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// FPU reads the legacy FPU/SSE state.
func (c *VCPU) FPU() (FPU, error) {
	var f FPU
	if err := ioctlPtr(c.fd, kvmGetFPU, &f); err != nil {
		return f, fmt.Errorf("KVM_GET_FPU vCPU %d: %w", c.ID, err)
	}
	return f, nil
}

// SetFPU writes the legacy FPU/SSE state.
func (c *VCPU) SetFPU(f FPU) error {
	if err := ioctlPtr(c.fd, kvmSetFPU, &f); err != nil {
		return fmt.Errorf("KVM_SET_FPU vCPU %d: %w", c.ID, err)
	}
	return nil
}

// SetCPUID sets the CPUID leaves the guest sees.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if _, err := cpuidIoctl(c.fd, kvmSetCPUID2, entries, 0); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 vCPU %d (%d leaves): %w", c.ID, len(entries), err)
	}
	return nil
}

// CPUID reads back the CPUID leaves set on this vCPU.
func (c *VCPU) CPUID() ([]CPUIDEntry, error) {
	e, err := cpuidIoctl(c.fd, kvmGetCPUID2, nil, 256)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_CPUID2 vCPU %d: %w", c.ID, err)
	}
	return e, nil
}

// MSRs reads the MSRs whose indexes are given in msrs, in place.
func (c *VCPU) MSRs(msrs []MSR) error {
	n, err := msrIoctl(c.fd, kvmGetMSRs, msrs)
	if err != nil {
		return fmt.Errorf("KVM_GET_MSRS vCPU %d: %w", c.ID, err)
	}
	if n != len(msrs) {
		return fmt.Errorf("KVM_GET_MSRS vCPU %d: read %d of %d MSRs (first failing: %#x)", c.ID, n, len(msrs), msrs[n].Index)
	}
	return nil
}

// SetMSRs writes MSRs; every one must be accepted.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	n, err := msrIoctl(c.fd, kvmSetMSRs, msrs)
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS vCPU %d: %w", c.ID, err)
	}
	if n != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS vCPU %d: wrote %d of %d MSRs (first refused: %#x)", c.ID, n, len(msrs), msrs[n].Index)
	}
	return nil
}

// LAPIC reads the in-kernel local APIC's registers.
func (c *VCPU) LAPIC() (LAPIC, error) {
	var l LAPIC
	if err := ioctlPtr(c.fd, kvmGetLAPIC, &l); err != nil {
		return l, fmt.Errorf("KVM_GET_LAPIC vCPU %d: %w", c.ID, err)
	}
	return l, nil
}

// SetLAPIC writes the in-kernel local APIC's registers.
func (c *VCPU) SetLAPIC(l LAPIC) error {
	if err := ioctlPtr(c.fd, kvmSetLAPIC, &l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC vCPU %d: %w", c.ID, err)
	}
	return nil
}

// MPState reads the multiprocessing state (runnable, halted, waiting for SIPI…).
func (c *VCPU) MPState() (uint32, error) {
	var s uint32
	if err := ioctlPtr(c.fd, kvmGetMPState, &s); err != nil {
		return 0, fmt.Errorf("KVM_GET_MP_STATE vCPU %d: %w", c.ID, err)
	}
	return s, nil
}

// SetMPState writes the multiprocessing state.
func (c *VCPU) SetMPState(s uint32) error {
	if err := ioctlPtr(c.fd, kvmSetMPState, &s); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE vCPU %d: %w", c.ID, err)
	}
	return nil
}

// Events reads pending exceptions, interrupts, NMIs and SMIs.
func (c *VCPU) Events() (VCPUEvents, error) {
	var e VCPUEvents
	if err := ioctlPtr(c.fd, kvmGetVCPUEvents, &e); err != nil {
		return e, fmt.Errorf("KVM_GET_VCPU_EVENTS vCPU %d: %w", c.ID, err)
	}
	return e, nil
}

// SetEvents restores pending events.
func (c *VCPU) SetEvents(e VCPUEvents) error {
	if err := ioctlPtr(c.fd, kvmSetVCPUEvents, &e); err != nil {
		return fmt.Errorf("KVM_SET_VCPU_EVENTS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// DebugRegs reads DR0–3, DR6 and DR7.
func (c *VCPU) DebugRegs() (DebugRegs, error) {
	var d DebugRegs
	if err := ioctlPtr(c.fd, kvmGetDebugRegs, &d); err != nil {
		return d, fmt.Errorf("KVM_GET_DEBUGREGS vCPU %d: %w", c.ID, err)
	}
	return d, nil
}

// SetDebugRegs writes the debug registers.
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	if err := ioctlPtr(c.fd, kvmSetDebugRegs, &d); err != nil {
		return fmt.Errorf("KVM_SET_DEBUGREGS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// XSave reads the XSAVE area (FPU, SSE, AVX… state).
func (c *VCPU) XSave() (XSave, error) {
	var x XSave
	if err := ioctlPtr(c.fd, kvmGetXSave, &x); err != nil {
		return x, fmt.Errorf("KVM_GET_XSAVE vCPU %d: %w", c.ID, err)
	}
	return x, nil
}

// SetXSave writes the XSAVE area.
func (c *VCPU) SetXSave(x XSave) error {
	if err := ioctlPtr(c.fd, kvmSetXSave, &x); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE vCPU %d: %w", c.ID, err)
	}
	return nil
}

// XCRs reads the extended control registers (XCR0).
func (c *VCPU) XCRs() (XCRs, error) {
	var x XCRs
	if err := ioctlPtr(c.fd, kvmGetXCRs, &x); err != nil {
		return x, fmt.Errorf("KVM_GET_XCRS vCPU %d: %w", c.ID, err)
	}
	return x, nil
}

// SetXCRs writes the extended control registers.
func (c *VCPU) SetXCRs(x XCRs) error {
	if err := ioctlPtr(c.fd, kvmSetXCRs, &x); err != nil {
		return fmt.Errorf("KVM_SET_XCRS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// TSCKHz reads the guest TSC frequency.
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctlValue(c.fd, kvmGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vCPU %d: %w", c.ID, err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the guest TSC frequency (restoring on another host).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctlValue(c.fd, kvmSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ vCPU %d: %w", c.ID, err)
	}
	return nil
}

// KVMClockCtrl tells the guest it was paused, so its soft-lockup detector
// does not fire after a long pause or a restore.
func (c *VCPU) KVMClockCtrl() error {
	if _, err := ioctlValue(c.fd, kvmKVMClockCtrl, 0); err != nil {
		return fmt.Errorf("KVM_KVMCLOCK_CTRL vCPU %d: %w", c.ID, err)
	}
	return nil
}
