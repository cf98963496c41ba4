package mmio_test

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
	"github.com/voltvmm/volt/vmm/virtio/rng"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

var _ mmio.KVM = (*kvm.VM)(nil)

// A real guest notifies through an ioeventfd and is interrupted through an
// irqfd: a real-mode guest writes queue 0's index to QueueNotify of an
// entropy device that was brought up through its registers. KVM must
// complete that write in the kernel (no MMIO exit; the vCPU's next exit is
// the OUT after it), the worker must serve the request, and its interrupt
// must arrive on the GSI (the in-kernel PIC latches it in IRR).
func TestIOEventFDAndIRQFDOnARealVM(t *testing.T) {
	kvmtest.Require(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	const (
		ramSize = 512 << 10
		base    = 0xb0000 // above RAM, reachable from real mode as B000:0050
		gsi     = 5
	)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := memory.New(memory.Config{Size: ramSize})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := vm.SetUserMemoryRegion(0, 0, 0, mem.Regions()[0].Host); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}

	dev, err := rng.New(rng.Config{})
	if err != nil {
		t.Fatal(err)
	}
	fallback := virtiotest.NewTrigger()
	tr, err := mmio.New(dev, mmio.Config{Name: "rng-kvm", Memory: mem, IRQ: fallback})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	att, err := tr.AttachKVM(vm, base, gsi)
	if err != nil {
		t.Fatal(err)
	}

	// The driver's side, through the registers.
	w := func(off uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		tr.Write(off, b[:])
	}
	ring, err := virtiotest.NewRing(mem, 0x10000, 16, 0x40000, ramSize)
	if err != nil {
		t.Fatal(err)
	}
	w(status, ack)
	w(status, ack|driver)
	w(drvFeaturesSel, 1)
	w(drvFeatures, 1) // VIRTIO_F_VERSION_1
	w(status, ack|driver|featuresOK)
	w(queueSel, 0)
	w(queueNum, 16)
	w(descLow, uint32(ring.Desc))
	w(availLow, uint32(ring.Avail))
	w(usedLow, uint32(ring.Used))
	w(queueReady, 1)
	w(status, ack|driver|featuresOK|driverOK)
	if _, err := ring.Add(virtiotest.Segments{Writable: []uint32{32}}); err != nil {
		t.Fatal(err)
	}

	// mov ax, 0xb000; mov ds, ax; mov dword [0x50], 0; out 0x80, al; hlt
	// (HLT itself stays in the kernel with an in-kernel irqchip, so the
	// OUT is what brings the vCPU back.)
	code := []byte{0xb8, 0x00, 0xb0, 0x8e, 0xd8, 0x66, 0xc7, 0x06, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe6, 0x80, 0xf4}
	if err := mem.Write(0x1000, code); err != nil {
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
	exit, err := cpu.Run()
	if err != nil {
		t.Fatal(err)
	}
	if io, ok := exit.(kvm.IOExit); !ok || io.Port != 0x80 {
		t.Fatalf("exit %v (%#v), want the OUT to port 0x80: the QueueNotify write was not taken by the ioeventfd", exit.Reason(), exit)
	}

	deadline := time.Now().Add(10 * time.Second)
	var used virtiotest.Used
	for {
		u, ok, err := ring.PopUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			used = u
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the device never served the request notified through the ioeventfd")
		}
		time.Sleep(time.Millisecond)
	}
	if used.Len != 32 {
		t.Fatalf("used %d bytes, want 32", used.Len)
	}
	for {
		pic, err := vm.IRQChip(kvm.IRQChipPICMaster)
		if err != nil {
			t.Fatal(err)
		}
		if pic.Chip[1]&(1<<gsi) != 0 { // struct kvm_pic_state: last_irr, irr, ...
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("IRQ %d never reached the PIC (irr %#x)", gsi, pic.Chip[1])
		}
		time.Sleep(time.Millisecond)
	}
	if n := fallback.Count.Load(); n != 0 {
		t.Fatalf("%d interrupts went to the fallback trigger instead of the irqfd", n)
	}
	var st [4]byte
	tr.Read(intStatus, st[:])
	if binary.LittleEndian.Uint32(st[:])&virtio.InterruptUsedBuffer == 0 {
		t.Fatal("InterruptStatus lacks the used-buffer bit")
	}

	// Unregistering frees both registrations: registering the same GSI and
	// address again succeeds.
	if err := att.DetachKVM(); err != nil {
		t.Fatal(err)
	}
	e, err := virtio.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	fd, _ := e.FD()
	match := uint64(0)
	if err := vm.RegisterIOEventFD(base+mmio.QueueNotifyOffset, 4, fd, &match); err != nil {
		t.Fatalf("re-register after detach: %v", err)
	}
	if err := vm.RegisterIOEventFD(base+mmio.QueueNotifyOffset, 4, fd, &match); err == nil {
		t.Fatal("a duplicate ioeventfd registration succeeded")
	}
	if err := vm.UnregisterIOEventFD(base+mmio.QueueNotifyOffset, 4, fd, &match); err != nil {
		t.Fatal(err)
	}
	if err := vm.RegisterIRQFD(fd, gsi); err != nil {
		t.Fatalf("irqfd after detach: %v", err)
	}
	if err := vm.RegisterIRQFD(fd, gsi); err == nil {
		t.Fatal("a duplicate irqfd registration succeeded")
	}
	if err := vm.UnregisterIRQFD(fd, gsi); err != nil {
		t.Fatal(err)
	}
}
