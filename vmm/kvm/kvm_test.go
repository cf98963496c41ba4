package kvm_test

import (
	"runtime"
	"testing"

	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
	"golang.org/x/sys/unix"
)

// A real-mode guest of three instructions proves the ioctl layer end to end:
// memory slot, registers, KVM_RUN, and the decoding of an OUT and a HLT exit.
func TestRealModeGuestExitsDecode(t *testing.T) {
	kvmtest.Require(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	vm := newVM(t)
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	// mov al, 0x61; out 0x80, al; mov dx, 0x3f8; in al, dx; hlt
	copy(mem[0x1000:], []byte{0xb0, 0x61, 0xe6, 0x80, 0xba, 0xf8, 0x03, 0xec, 0xf4})
	if err := vm.SetUserMemoryRegion(0, 0, 0, mem); err != nil {
		t.Fatal(err)
	}
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	sregs, err := cpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := cpu.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetRegs(kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}

	exit := run(t, cpu)
	out, ok := exit.(kvm.IOExit)
	if !ok || !out.Out || out.Port != 0x80 || len(out.Data) != 1 || out.Data[0] != 0x61 {
		t.Fatalf("first exit = %#v, want OUT 0x61 to port 0x80", exit)
	}
	exit = run(t, cpu)
	in, ok := exit.(kvm.IOExit)
	if !ok || in.Out || in.Port != 0x3f8 || in.Size != 1 {
		t.Fatalf("second exit = %#v, want IN from 0x3f8", exit)
	}
	in.Data[0] = 0x5a
	if exit = run(t, cpu); exit.Reason() != kvm.ExitHLT {
		t.Fatalf("third exit = %v, want HLT", exit.Reason())
	}
	regs, err := cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RAX&0xff != 0x5a {
		t.Errorf("AL = %#x after IN, want the 0x5a we supplied", regs.RAX&0xff)
	}
}

func TestKickInterruptsRun(t *testing.T) {
	kvmtest.Require(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	vm := newVM(t)
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	cpu.Kick() // immediate_exit: the next Run must return at once
	exit, err := cpu.Run()
	if err != nil {
		t.Fatal(err)
	}
	if exit.Reason() != kvm.ExitIntr {
		t.Fatalf("Run after Kick = %v, want KVM_EXIT_INTR", exit.Reason())
	}
}

func TestSupportedCPUIDAndMSRList(t *testing.T) {
	kvmtest.Require(t)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	leaves, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if len(leaves) == 0 || leaves[0].Function != 0 {
		t.Fatalf("supported CPUID has %d leaves, first %#x", len(leaves), leaves[0].Function)
	}
	msrs, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if len(msrs) == 0 {
		t.Fatal("empty MSR index list")
	}
	if sys.MaxVCPUs() < 1 {
		t.Fatal("MaxVCPUs < 1")
	}
}

// newVM opens KVM and creates a VM that is closed when the test ends.
func newVM(t *testing.T) *kvm.VM {
	t.Helper()
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

func run(t *testing.T, cpu *kvm.VCPU) kvm.Exit {
	t.Helper()
	for {
		exit, err := cpu.Run()
		if err != nil {
			t.Fatal(err)
		}
		if exit.Reason() != kvm.ExitIntr {
			return exit
		}
	}
}
