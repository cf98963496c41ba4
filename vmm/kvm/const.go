package kvm

import "strconv"

// Ioctl numbers from <linux/kvm.h>, encoded as the kernel's _IO/_IOR/_IOW/
// _IOWR macros do, so that a wrong struct size shows up as a different number
// (and a clean ENOTTY) rather than as memory corruption.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	kvmio = 0xAE
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }
func io_(nr uintptr) uintptr            { return ioc(iocNone, nr, 0) }
func ior(nr, size uintptr) uintptr      { return ioc(iocRead, nr, size) }
func iow(nr, size uintptr) uintptr      { return ioc(iocWrite, nr, size) }
func iowr(nr, size uintptr) uintptr     { return ioc(iocRead|iocWrite, nr, size) }

var (
	kvmGetAPIVersion       = io_(0x00)
	kvmCreateVM            = io_(0x01)
	kvmGetMSRIndexList     = iowr(0x02, 4)
	kvmCheckExtension      = io_(0x03)
	kvmGetVCPUMmapSize     = io_(0x04)
	kvmGetSupportedCPUID   = iowr(0x05, 8)
	kvmCreateVCPU          = io_(0x41)
	kvmGetDirtyLog         = iow(0x42, 16)
	kvmSetUserMemoryRegion = iow(0x46, 32)
	kvmSetTSSAddr          = io_(0x47)
	kvmSetIdentityMapAddr  = iow(0x48, 8)
	kvmCreateIRQChip       = io_(0x60)
	kvmIRQLine             = iow(0x61, 8)
	kvmGetIRQChip          = iowr(0x62, 520)
	kvmSetIRQChip          = ior(0x63, 520)
	kvmCreatePIT2          = iow(0x77, 64)
	kvmSetClock            = iow(0x7b, 48)
	kvmGetClock            = ior(0x7c, 48)
	kvmRun                 = io_(0x80)
	kvmGetRegs             = ior(0x81, 144)
	kvmSetRegs             = iow(0x82, 144)
	kvmGetSregs            = ior(0x83, 312)
	kvmSetSregs            = iow(0x84, 312)
	kvmGetMSRs             = iowr(0x88, 8)
	kvmSetMSRs             = iow(0x89, 8)
	kvmGetFPU              = ior(0x8c, 416)
	kvmSetFPU              = iow(0x8d, 416)
	kvmGetLAPIC            = ior(0x8e, 1024)
	kvmSetLAPIC            = iow(0x8f, 1024)
	kvmSetCPUID2           = iow(0x90, 8)
	kvmGetCPUID2           = iowr(0x91, 8)
	kvmGetMPState          = ior(0x98, 4)
	kvmSetMPState          = iow(0x99, 4)
	kvmGetVCPUEvents       = ior(0x9f, 64)
	kvmSetVCPUEvents       = iow(0xa0, 64)
	kvmGetPIT2             = ior(0x9f, 112)
	kvmSetPIT2             = iow(0xa0, 112)
	kvmGetDebugRegs        = ior(0xa1, 128)
	kvmSetDebugRegs        = iow(0xa2, 128)
	kvmGetXSave            = ior(0xa4, 4096)
	kvmSetXSave            = iow(0xa5, 4096)
	kvmGetXCRs             = ior(0xa6, 392)
	kvmSetXCRs             = iow(0xa7, 392)
	kvmGetTSCKHz           = io_(0xa3)
	kvmSetTSCKHz           = io_(0xa2)
	kvmKVMClockCtrl        = io_(0xad)
)

// APIVersion is the only KVM API version that has ever been stable.
const APIVersion = 12

// Capability is a KVM_CAP_* number for KVM_CHECK_EXTENSION.
type Capability uintptr

// The capabilities Volt relies on.
const (
	CapIRQChip          Capability = 0
	CapUserMemory       Capability = 3
	CapSetTSSAddr       Capability = 4
	CapExtCPUID         Capability = 7
	CapPIT2             Capability = 33
	CapSetIdentityMap   Capability = 37
	CapIRQFD            Capability = 32
	CapIOEventFD        Capability = 36
	CapAdjustClock      Capability = 39
	CapVCPUEvents       Capability = 41
	CapDebugRegs        Capability = 50
	CapXSave            Capability = 55
	CapXCRs             Capability = 56
	CapTSCControl       Capability = 60
	CapGetTSCKHz        Capability = 61
	CapNrVCPUs          Capability = 9
	CapMaxVCPUs         Capability = 66
	CapImmediateExit    Capability = 136
	CapTSCDeadlineTimer Capability = 72
)

var capNames = map[Capability]string{
	CapIRQChip: "KVM_CAP_IRQCHIP", CapUserMemory: "KVM_CAP_USER_MEMORY", CapSetTSSAddr: "KVM_CAP_SET_TSS_ADDR",
	CapExtCPUID: "KVM_CAP_EXT_CPUID", CapPIT2: "KVM_CAP_PIT2", CapSetIdentityMap: "KVM_CAP_SET_IDENTITY_MAP_ADDR",
	CapIRQFD: "KVM_CAP_IRQFD", CapIOEventFD: "KVM_CAP_IOEVENTFD", CapAdjustClock: "KVM_CAP_ADJUST_CLOCK",
	CapVCPUEvents: "KVM_CAP_VCPU_EVENTS", CapDebugRegs: "KVM_CAP_DEBUGREGS", CapXSave: "KVM_CAP_XSAVE",
	CapXCRs: "KVM_CAP_XCRS", CapTSCControl: "KVM_CAP_TSC_CONTROL", CapGetTSCKHz: "KVM_CAP_GET_TSC_KHZ",
	CapNrVCPUs: "KVM_CAP_NR_VCPUS", CapMaxVCPUs: "KVM_CAP_MAX_VCPUS", CapImmediateExit: "KVM_CAP_IMMEDIATE_EXIT",
	CapTSCDeadlineTimer: "KVM_CAP_TSC_DEADLINE_TIMER",
}

func (c Capability) String() string {
	if n, ok := capNames[c]; ok {
		return n
	}
	return "KVM_CAP_" + strconv.FormatUint(uint64(c), 10)
}

// RequiredCapabilities are checked when the system is opened, so a host that
// lacks one fails at once with the capability's name.
var RequiredCapabilities = []Capability{
	CapIRQChip, CapUserMemory, CapSetTSSAddr, CapExtCPUID, CapPIT2, CapSetIdentityMap, CapImmediateExit,
}

// ExitReason is kvm_run.exit_reason.
type ExitReason uint32

const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
)

var exitNames = map[ExitReason]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO", ExitHypercall: "HYPERCALL",
	ExitDebug: "DEBUG", ExitHLT: "HLT", ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
	ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT",
}

func (r ExitReason) String() string {
	if n, ok := exitNames[r]; ok {
		return "KVM_EXIT_" + n
	}
	return "KVM_EXIT_" + strconv.FormatUint(uint64(r), 10)
}

// Internal-error suberrors.
const (
	InternalErrorEmulation      = 1
	InternalErrorSimulEx        = 2
	InternalErrorDeliveryEv     = 3
	InternalErrorUnexpectedExit = 4
)

// System-event types.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// MP states for KVM_SET_MP_STATE.
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSIPIReceived  = 4
)

// Memory-region flags.
const (
	MemLogDirtyPages = 1 << 0
	MemReadonly      = 1 << 1
)
