package kvm

import "fmt"

// KVM_IOEVENTFD and KVM_IRQFD (Documentation/virt/kvm/api.rst):
// an eventfd that KVM signals when the guest writes an address, and one it
// waits on to inject an interrupt. Their numbers and flags live here rather
// than in const.go because only virtio uses them.
var (
	kvmIRQFD     = iow(0x76, 32)
	kvmIOEventFD = iow(0x79, 64)
)

const (
	ioeventfdFlagDatamatch = 1 << 0
	ioeventfdFlagPIO       = 1 << 1
	ioeventfdFlagDeassign  = 1 << 2

	irqfdFlagDeassign = 1 << 0
)

// ioeventfd mirrors struct kvm_ioeventfd.
type ioeventfd struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]byte
}

// irqfd mirrors struct kvm_irqfd.
type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]byte
}

func (vm *VM) ioeventfd(addr uint64, length uint32, fd int, datamatch *uint64, flags uint32) error {
	e := ioeventfd{Addr: addr, Len: length, FD: int32(fd), Flags: flags}
	if datamatch != nil {
		e.Datamatch = *datamatch
		e.Flags |= ioeventfdFlagDatamatch
	}
	return ioctlPtr(vm.fd, kvmIOEventFD, &e)
}

// RegisterIOEventFD makes a guest MMIO write of length bytes (1, 2, 4 or
// 8; 0 for any) at addr signal the eventfd fd instead of exiting to the
// VMM. With datamatch, only writes of that value do. KVM keeps its own
// reference to the eventfd until UnregisterIOEventFD or the VM's end.
func (vm *VM) RegisterIOEventFD(addr uint64, length uint32, fd int, datamatch *uint64) error {
	if err := vm.ioeventfd(addr, length, fd, datamatch, 0); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD at %#x (%d bytes): %w", addr, length, err)
	}
	return nil
}

// UnregisterIOEventFD removes a registration made with the same arguments.
func (vm *VM) UnregisterIOEventFD(addr uint64, length uint32, fd int, datamatch *uint64) error {
	if err := vm.ioeventfd(addr, length, fd, datamatch, ioeventfdFlagDeassign); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD deassign at %#x (%d bytes): %w", addr, length, err)
	}
	return nil
}

// RegisterPIOEventFD is RegisterIOEventFD for a port-I/O write.
func (vm *VM) RegisterPIOEventFD(port uint64, length uint32, fd int, datamatch *uint64) error {
	if err := vm.ioeventfd(port, length, fd, datamatch, ioeventfdFlagPIO); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD at port %#x (%d bytes): %w", port, length, err)
	}
	return nil
}

// UnregisterPIOEventFD removes a RegisterPIOEventFD registration.
func (vm *VM) UnregisterPIOEventFD(port uint64, length uint32, fd int, datamatch *uint64) error {
	if err := vm.ioeventfd(port, length, fd, datamatch, ioeventfdFlagPIO|ioeventfdFlagDeassign); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD deassign at port %#x (%d bytes): %w", port, length, err)
	}
	return nil
}

// RegisterIRQFD makes a signal on the eventfd fd raise an edge on gsi of
// the in-kernel irqchip (CreateIRQChip first), without an ioctl per
// interrupt.
func (vm *VM) RegisterIRQFD(fd int, gsi uint32) error {
	r := irqfd{FD: uint32(fd), GSI: gsi}
	if err := ioctlPtr(vm.fd, kvmIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD GSI %d: %w", gsi, err)
	}
	return nil
}

// UnregisterIRQFD removes a RegisterIRQFD registration.
func (vm *VM) UnregisterIRQFD(fd int, gsi uint32) error {
	r := irqfd{FD: uint32(fd), GSI: gsi, Flags: irqfdFlagDeassign}
	if err := ioctlPtr(vm.fd, kvmIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD deassign GSI %d: %w", gsi, err)
	}
	return nil
}
