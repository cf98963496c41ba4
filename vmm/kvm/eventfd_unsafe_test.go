package kvm

import (
	"testing"
	"unsafe"
)

// The ioctl numbers of KVM_IOEVENTFD and KVM_IRQFD encode these sizes.
func TestEventFDStructSizesMatchTheKernelABI(t *testing.T) {
	tests := []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_ioeventfd", unsafe.Sizeof(ioeventfd{}), 64},
		{"kvm_irqfd", unsafe.Sizeof(irqfd{}), 32},
		{"kvm_ioeventfd.fd offset", unsafe.Offsetof(ioeventfd{}.FD), 20},
		{"kvm_ioeventfd.flags offset", unsafe.Offsetof(ioeventfd{}.Flags), 24},
		{"kvm_irqfd.resamplefd offset", unsafe.Offsetof(irqfd{}.ResampleFD), 12},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	if kvmIOEventFD != 0x4040ae79 || kvmIRQFD != 0x4020ae76 {
		t.Errorf("KVM_IOEVENTFD = %#x, KVM_IRQFD = %#x; want 0x4040ae79, 0x4020ae76", kvmIOEventFD, kvmIRQFD)
	}
}
