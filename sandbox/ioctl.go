package sandbox

import "golang.org/x/sys/unix"

// Ioctl is one ioctl request number with its <linux/*.h> name.
type Ioctl struct {
	Name   string
	Number uint32
}

// The ioctl encoding of <asm-generic/ioctl.h>. The KVM numbers are copied
// here as data from <linux/kvm.h> (vmm/kvm/const.go encodes the same ones
// for the calls; the sandbox must not depend on the VMM it confines), and
// a test checks the well-known ones against their published values.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
	kvmio    = 0xAE
)

func kvmIoctl(name string, dir, nr, size uint32) Ioctl {
	return Ioctl{Name: name, Number: dir<<30 | size<<16 | kvmio<<8 | nr}
}

// KVM requests a running VM makes: the run loop, interrupts, and the state
// reads of a snapshot and of a pause (vCPU threads and the VM fd).
var (
	kvmRun             = kvmIoctl("KVM_RUN", iocNone, 0x80, 0)
	kvmIRQLine         = kvmIoctl("KVM_IRQ_LINE", iocWrite, 0x61, 8)
	kvmGetRegs         = kvmIoctl("KVM_GET_REGS", iocRead, 0x81, 144)
	kvmGetSregs        = kvmIoctl("KVM_GET_SREGS", iocRead, 0x83, 312)
	kvmGetMSRs         = kvmIoctl("KVM_GET_MSRS", iocRead|iocWrite, 0x88, 8)
	kvmGetLAPIC        = kvmIoctl("KVM_GET_LAPIC", iocRead, 0x8e, 1024)
	kvmGetMPState      = kvmIoctl("KVM_GET_MP_STATE", iocRead, 0x98, 4)
	kvmGetVCPUEvents   = kvmIoctl("KVM_GET_VCPU_EVENTS", iocRead, 0x9f, 64)
	kvmGetDebugRegs    = kvmIoctl("KVM_GET_DEBUGREGS", iocRead, 0xa1, 128)
	kvmGetXSave        = kvmIoctl("KVM_GET_XSAVE", iocRead, 0xa4, 4096)
	kvmGetXCRs         = kvmIoctl("KVM_GET_XCRS", iocRead, 0xa6, 392)
	kvmGetTSCKHz       = kvmIoctl("KVM_GET_TSC_KHZ", iocNone, 0xa3, 0)
	kvmKVMClockCtrl    = kvmIoctl("KVM_KVMCLOCK_CTRL", iocNone, 0xad, 0)
	kvmGetIRQChip      = kvmIoctl("KVM_GET_IRQCHIP", iocRead|iocWrite, 0x62, 520)
	kvmGetPIT2         = kvmIoctl("KVM_GET_PIT2", iocRead, 0x9f, 112)
	kvmGetClock        = kvmIoctl("KVM_GET_CLOCK", iocRead, 0x7c, 48)
	kvmGetDirtyLog     = kvmIoctl("KVM_GET_DIRTY_LOG", iocWrite, 0x42, 16)
	kvmGetMSRIndexList = kvmIoctl("KVM_GET_MSR_INDEX_LIST", iocRead|iocWrite, 0x02, 4)
	kvmIOEventFD       = kvmIoctl("KVM_IOEVENTFD", iocWrite, 0x79, 64)
	kvmIRQFD           = kvmIoctl("KVM_IRQFD", iocWrite, 0x76, 32)
)

// KVM requests only building or restoring a VM makes. No filter allows
// them: filters go on once the VM is built, so a compromised VMM cannot
// create VMs, vCPUs or memory slots, nor rewrite a vCPU's state. The tests
// use them as forbidden vectors.
var (
	kvmCreateVM            = kvmIoctl("KVM_CREATE_VM", iocNone, 0x01, 0)
	kvmCreateVCPU          = kvmIoctl("KVM_CREATE_VCPU", iocNone, 0x41, 0)
	kvmSetUserMemoryRegion = kvmIoctl("KVM_SET_USER_MEMORY_REGION", iocWrite, 0x46, 32)
	kvmSetRegs             = kvmIoctl("KVM_SET_REGS", iocWrite, 0x82, 144)
	kvmSetMSRs             = kvmIoctl("KVM_SET_MSRS", iocWrite, 0x89, 8)
	kvmSetCPUID2           = kvmIoctl("KVM_SET_CPUID2", iocWrite, 0x90, 8)
)

// TUN requests: a virtio-net device sets the TAP's offloads when the guest
// activates or resets it (on the vCPU thread that wrote the status).
var (
	tunSetOffload    = Ioctl{"TUNSETOFFLOAD", unix.TUNSETOFFLOAD}
	tunSetVnetHdrSz  = Ioctl{"TUNSETVNETHDRSZ", unix.TUNSETVNETHDRSZ}
	tunGetFeatures   = Ioctl{"TUNGETFEATURES", unix.TUNGETFEATURES}
	tunSetIff        = Ioctl{"TUNSETIFF", unix.TUNSETIFF} // creating a TAP: never after the build
	terminalGetAttrs = Ioctl{"TCGETS", unix.TCGETS}       // not allowed: named for the tests
)

// kvmVCPUIoctls are what a vCPU thread issues on its own vCPU fd, plus the
// interrupt line its devices raise on the VM fd.
var kvmVCPUIoctls = []Ioctl{
	kvmRun, kvmIRQLine,
	kvmGetRegs, kvmGetSregs, kvmGetMSRs, kvmGetLAPIC, kvmGetMPState, kvmGetVCPUEvents,
	kvmGetDebugRegs, kvmGetXSave, kvmGetXCRs, kvmGetTSCKHz, kvmKVMClockCtrl,
}

// kvmVMIoctls are the VM- and system-fd requests of a running VM: state
// reads for snapshots, the dirty log for diff snapshots, and ioeventfd and
// irqfd (un)registration when a virtio transport attaches or detaches.
var kvmVMIoctls = []Ioctl{
	kvmGetIRQChip, kvmGetPIT2, kvmGetClock, kvmGetDirtyLog, kvmGetMSRIndexList, kvmIOEventFD, kvmIRQFD,
}

// tunIoctls are what a running virtio-net device asks of its TAP.
var tunIoctls = []Ioctl{tunSetOffload, tunSetVnetHdrSz, tunGetFeatures}
