package cpu

import (
	"encoding/binary"

	"github.com/voltvmm/volt/vmm/kvm"
)

// MSR indexes set at boot.
const (
	msrIA32TSC         = 0x10
	msrIA32SysenterCS  = 0x174
	msrIA32SysenterESP = 0x175
	msrIA32SysenterEIP = 0x176
	msrIA32MiscEnable  = 0x1a0
	msrMTRRDefType     = 0x2ff
	msrSTAR            = 0xc0000081
	msrLSTAR           = 0xc0000082
	msrCSTAR           = 0xc0000083
	msrSyscallMask     = 0xc0000084
	msrKernelGSBase    = 0xc0000102
	miscEnableFastStr  = 1 << 0
	mtrrEnable         = 1 << 11
	mtrrTypeWriteBack  = 6
)

// BootMSRs are the MSR values a freshly reset CPU should have when a kernel
// is entered directly, without firmware: syscall MSRs cleared, TSC at zero,
// fast strings on, and MTRRs enabled with write-back as the default type (a
// guest that finds MTRRs disabled maps all memory uncached).
func BootMSRs() []kvm.MSR {
	return []kvm.MSR{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase}, {Index: msrSyscallMask},
		{Index: msrLSTAR}, {Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastStr},
		{Index: msrMTRRDefType, Data: mtrrEnable | mtrrTypeWriteBack},
	}
}

// BootFPU is the FPU state after FNINIT with SSE exceptions masked.
func BootFPU() kvm.FPU {
	return kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
}

// LAPIC register offsets and delivery modes used to wire the local
// interrupt pins.
const (
	apicLVT0        = 0x350
	apicLVT1        = 0x360
	deliveryExtINT  = 0x7 << 8
	deliveryNMI     = 0x4 << 8
	deliveryModeMsk = 0x7 << 8
	lvtMasked       = 1 << 16
)

// WireLocalInterrupts routes LINT0 to the 8259 PIC (ExtINT) and LINT1 to
// NMI, the virtual-wire mode that PC guests (and our MP table) expect when
// they start.
func WireLocalInterrupts(l *kvm.LAPIC) {
	setLVT(l, apicLVT0, deliveryExtINT)
	setLVT(l, apicLVT1, deliveryNMI)
}

func setLVT(l *kvm.LAPIC, off int, mode uint32) {
	v := binary.LittleEndian.Uint32(l.Regs[off:])
	v = v&^(deliveryModeMsk|lvtMasked) | mode
	binary.LittleEndian.PutUint32(l.Regs[off:], v)
}
