// Package kvm is the thin layer between Volt and /dev/kvm: one method per
// ioctl, no policy. It is the only package that uses unsafe (in *_unsafe.go
// files), and its handles own their file descriptors: call Close.
package kvm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM device lives.
const DevicePath = "/dev/kvm"

// ErrUnavailable is wrapped when /dev/kvm is missing or unusable, so
// callers (and tests) can tell "no KVM here" from a real failure.
var ErrUnavailable = errors.New("KVM is not available")

// System is an open /dev/kvm.
type System struct {
	fd       int
	mmapSize int
}

// Open opens /dev/kvm, checks the API version and every capability Volt
// needs, so that a host lacking one fails here with its name.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, fmt.Errorf("open %s: %w: %w: load kvm_intel or kvm_amd, or enable nested virtualisation", DevicePath, ErrUnavailable, err)
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("open %s: %w: %w: run as root or join group kvm", DevicePath, ErrUnavailable, err)
		}
		return nil, fmt.Errorf("open %s: %w: %w", DevicePath, ErrUnavailable, err)
	}
	s := &System{fd: fd}
	v, err := ioctlValue(fd, kvmGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("%w: KVM API version %d, Volt needs %d", ErrUnavailable, v, APIVersion)
	}
	for _, c := range RequiredCapabilities {
		if s.CheckExtension(c) <= 0 {
			s.Close()
			return nil, fmt.Errorf("%w: the host lacks %s", ErrUnavailable, c)
		}
	}
	size, err := ioctlValue(fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	s.mmapSize = int(size)
	return s, nil
}

// Close closes /dev/kvm; VMs created from it stay valid.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer: 0 when absent, else a
// capability-specific positive value.
func (s *System) CheckExtension(c Capability) int {
	r, err := ioctlValue(s.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// MaxVCPUs is the largest vCPU count a VM may have on this host.
func (s *System) MaxVCPUs() int {
	if n := s.CheckExtension(CapMaxVCPUs); n > 0 {
		return n
	}
	if n := s.CheckExtension(CapNrVCPUs); n > 0 {
		return n
	}
	return 4 // what the KVM API documents when neither capability answers
}

// SupportedCPUID returns the CPUID leaves KVM can expose to guests.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	entries, err := cpuidIoctl(s.fd, kvmGetSupportedCPUID, nil, 256)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return entries, nil
}

// MSRIndexList returns the MSRs KVM saves and restores for a vCPU.
func (s *System) MSRIndexList() ([]uint32, error) {
	l, err := msrIndexList(s.fd)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return l, nil
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctlValue(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{fd: int(fd), mmapSize: s.mmapSize}, nil
}

// VM is a KVM virtual machine.
type VM struct {
	fd       int
	mmapSize int
}

// Close closes the VM fd. The VM is destroyed once its vCPUs are closed too.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	return err
}

// SetUserMemoryRegion maps host memory into the guest-physical address space.
// host must stay mapped for as long as the slot exists.
func (vm *VM) SetUserMemoryRegion(slot uint32, flags uint32, guestAddr uint64, host []byte) error {
	r := userspaceMemoryRegion{
		Slot:          slot,
		Flags:         flags,
		GuestPhysAddr: guestAddr,
		MemorySize:    uint64(len(host)),
		UserspaceAddr: hostAddr(host),
	}
	if err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x (+%#x): %w", slot, guestAddr, len(host), err)
	}
	return nil
}

// SetTSSAddr places the three pages Intel VT needs for real-mode emulation.
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctlValue(vm.fd, kvmSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the identity-map page Intel VT needs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if err := ioctlPtr(vm.fd, kvmSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and per-vCPU LAPICs. It
// must precede CreateVCPU.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctlValue(vm.fd, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 timer.
func (vm *VM) CreatePIT2() error {
	var c pitConfig
	if err := ioctlPtr(vm.fd, kvmCreatePIT2, &c); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of a GSI on the in-kernel PIC and IOAPIC.
func (vm *VM) IRQLine(irq uint32, high bool) error {
	l := irqLevel{IRQ: irq}
	if high {
		l.Level = 1
	}
	if err := ioctlPtr(vm.fd, kvmIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE %d: %w", irq, err)
	}
	return nil
}

// IRQChip reads one in-kernel interrupt controller's state.
func (vm *VM) IRQChip(chip uint32) (IRQChip, error) {
	c := IRQChip{ChipID: chip}
	if err := ioctlPtr(vm.fd, kvmGetIRQChip, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_IRQCHIP %d: %w", chip, err)
	}
	return c, nil
}

// SetIRQChip restores one in-kernel interrupt controller's state.
func (vm *VM) SetIRQChip(c IRQChip) error {
	if err := ioctlPtr(vm.fd, kvmSetIRQChip, &c); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP %d: %w", c.ChipID, err)
	}
	return nil
}

// PIT reads the in-kernel PIT's state.
func (vm *VM) PIT() (PITState, error) {
	var p PITState
	if err := ioctlPtr(vm.fd, kvmGetPIT2, &p); err != nil {
		return p, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return p, nil
}

// SetPIT restores the in-kernel PIT's state.
func (vm *VM) SetPIT(p PITState) error {
	if err := ioctlPtr(vm.fd, kvmSetPIT2, &p); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// Clock reads kvmclock's current value.
func (vm *VM) Clock() (ClockData, error) {
	var c ClockData
	if err := ioctlPtr(vm.fd, kvmGetClock, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets kvmclock, so a restored guest's clock continues where it was.
func (vm *VM) SetClock(c ClockData) error {
	c.Flags = 0 // only the clock value is restored; the flags are outputs
	if err := ioctlPtr(vm.fd, kvmSetClock, &c); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}

// DirtyLog fetches and clears the dirty-page bitmap of a slot registered
// with MemLogDirtyPages; bitmap needs one bit per 4 KiB page.
func (vm *VM) DirtyLog(slot uint32, bitmap []uint64) error {
	if err := dirtyLogIoctl(vm.fd, slot, bitmap); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its kvm_run page.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctlValue(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("map kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run, pid: os.Getpid()}, nil
}
