package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/guest/marker"
	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/sandbox"
	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/cpu"
	"github.com/voltvmm/volt/vmm/devices/bootmarker"
	"github.com/voltvmm/volt/vmm/devices/bus"
	"github.com/voltvmm/volt/vmm/devices/genid"
	"github.com/voltvmm/volt/vmm/devices/i8042"
	"github.com/voltvmm/volt/vmm/devices/uart"
	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/snapshot"
)

// Guest-physical addresses KVM needs for Intel VT's real-mode support: three
// pages for the TSS and one for the identity map, just below the 4 GiB
// boundary where no RAM or device lives.
const (
	tssAddr         = 0xfffb_d000
	identityMapAddr = 0xfffb_c000
)

// StopReason says why a VM stopped.
type StopReason string

// A guest on a PC without ACPI ends itself by resetting (the i8042's reset
// line, a triple fault, KVM's system event); the reset alone cannot tell a
// clean power-off from a reboot or a crash, so the boot markers decide: a
// guest that wrote the shutdown marker (volt-init and the probe do, before
// they reset) powered off; one whose kernel wrote the panic marker panicked;
// any other reset is reported as a reset, never as a clean power-off.
const (
	StopPowerOff    StopReason = "poweroff"     // the guest announced a shutdown (marker 0x6f), then reset
	StopReset       StopReason = "reset"        // the guest reset without announcing a shutdown: a reboot, or a crash
	StopPanic       StopReason = "panic"        // the guest kernel panicked (marker 0x5f, or KVM's crash event)
	StopTripleFault StopReason = "triple-fault" // KVM_EXIT_SHUTDOWN with nothing announced: the guest could not continue
	StopCanceled    StopReason = "canceled"     // the host asked the VM to stop
	StopError       StopReason = "error"        // a vCPU failed (emulation failure, entry failure, ioctl error)
)

// Result is how a VM ended.
type Result struct {
	Reason StopReason
	// Err is set for StopError: the failure, including a register dump for
	// emulation failures.
	Err error
}

// VM is one running (or ready to run) virtual machine.
type VM struct {
	cfg     Config
	sys     *kvm.System
	vm      *kvm.VM
	mem     *memory.Memory
	vcpus   []*kvm.VCPU
	entry   *boot.Entry
	pio     bus.Bus
	mmio    bus.Bus
	uart    *uart.UART
	i8042   *i8042.Controller
	markers *bootmarker.Device
	genid   *genid.Device
	console *firstWriteRecorder

	timeline Timeline

	// Stopping and pausing. Guarded by mu, except stopping, which vCPU
	// loops read on every exit.
	mu       sync.Mutex
	cond     *sync.Cond
	stopping atomic.Bool
	result   Result
	pause    bool
	parked   int
	running  int
	started  bool
	// startPaused makes Run park every vCPU before it first enters the
	// guest (a restore that is not to resume yet).
	startPaused bool
	// restored marks a VM built from a snapshot: its devices start paused.
	restored bool
	// The answers of set-up steps run in parallel with others: the
	// supported CPUID (cpuidDone is closed when it is in) and the PIT's
	// creation (pitDone delivers its error once, nil after waitPIT).
	cpuidDone      chan struct{}
	cpuidSupported []kvm.CPUIDEntry
	cpuidErr       error
	pitDone        chan error
	done           chan struct{}
	// work holds, per vCPU, a function that vCPU's own thread must run
	// while parked (state capture for snapshots).
	work []*vcpuWork
	// exits counts KVM exits by reason, for metrics.
	exits [kvm.ExitSystemEvent + 1]atomic.Uint64
	// virtio holds the virtio-mmio devices in slot order; devMem is the
	// memory they write through (dirty tracking).
	virtio []*virtioSlot
	devMem *deviceMemory
	// casLease keeps a restored VM's memory chunks from the CAS's garbage
	// collector while the VM lives.
	casLease *cas.Lease
	casStore string // the store of casLease
	// prefetching runs a restore's startPrefetch.
	prefetching sync.WaitGroup
	// confined is set once Run has applied cfg.Confinement; landlockDirs
	// are then the directories Landlock lets the process write.
	confined     atomic.Bool
	landlockDirs []string
	// snapshotBase is the memory ID of the VM's last snapshot, or of the
	// snapshot it was restored from: what a diff snapshot applies onto.
	snapshotBase snapshot.MemoryID
	// cpuid holds the leaves each vCPU was given. Snapshots record these
	// rather than KVM_GET_CPUID2's answer, which on some hosts reports bits
	// that were never set.
	cpuid [][]kvm.CPUIDEntry
}

type vcpuWork struct {
	fn   func(*kvm.VCPU) error
	done chan error
}

// Timeline holds the VMM-side timestamps of one boot.
type Timeline struct {
	Origin      time.Time
	VMCreated   time.Time // KVM_CREATE_VM returned
	MemoryReady time.Time // guest memory mapped and registered
	KernelReady time.Time // kernel, initrd and boot structures in memory (boot)
	// StateRestored is when every device and vCPU had its snapshot state
	// back (restore); a restore loads no kernel.
	StateRestored time.Time
	GuestEntry    time.Time // first KVM_RUN issued on the boot vCPU
}

// New creates the VM: KVM objects, memory, kernel and devices. It does not
// start the vCPUs; call Run.
func New(cfg Config) (_ *VM, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.applyProfile(); err != nil {
		return nil, err
	}
	if err := CheckHostMemory(cfg.MemorySize, cfg.AllowOvercommit); err != nil {
		return nil, err
	}
	v, err := newShell(cfg, true)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	// Memory slots are registered before the in-kernel irqchip exists:
	// measured here, the same KVM_SET_USER_MEMORY_REGION took 5–7 ms after
	// KVM_CREATE_IRQCHIP and 50–100 µs before it (the kernel synchronises
	// with irqchip users on every slot change once there are any).
	if err := v.setupMemory(memory.Config{Size: cfg.MemorySize, Backing: cfg.backing()}); err != nil {
		return nil, err
	}
	v.timeline.MemoryReady = time.Now()
	if err := v.setupPlatform(); err != nil {
		return nil, err
	}
	// Devices first: they add their parameters to the command line that
	// loading the kernel writes into guest memory.
	if err := v.setupVirtio(); err != nil {
		return nil, err
	}
	if err := v.loadKernel(); err != nil {
		return nil, err
	}
	v.timeline.KernelReady = time.Now()
	id, err := genid.NewID()
	if err != nil {
		return nil, err
	}
	if err := v.setupDevices(id); err != nil {
		return nil, err
	}
	if err := v.waitPIT(); err != nil {
		return nil, err
	}
	if err := v.createVCPUs(); err != nil {
		return nil, err
	}
	if err := v.setupBootVCPUs(); err != nil {
		return nil, err
	}
	return v, nil
}

// newShell returns a VM with KVM opened and the VM created, the common
// start of a boot and a restore; askCPUID starts asking KVM for the
// supported CPUID at once (askSupportedCPUID).
func newShell(cfg Config, askCPUID bool) (*VM, error) {
	if cfg.Origin.IsZero() {
		cfg.Origin = time.Now()
	}
	v := &VM{cfg: cfg, done: make(chan struct{})}
	v.cond = sync.NewCond(&v.mu)
	v.timeline.Origin = cfg.Origin
	var err error
	if v.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	// KVM_GET_SUPPORTED_CPUID takes about a millisecond here and nothing
	// before the vCPUs' set-up needs it: a boot asks now and lets VM
	// creation, memory and the kernel load overlap it.
	if askCPUID {
		v.askSupportedCPUID()
	}
	if cfg.CPUs > 0 {
		if err := v.checkVCPUCount(); err != nil {
			v.Close()
			return nil, err
		}
	}
	if v.vm, err = v.sys.CreateVM(); err != nil {
		v.Close()
		return nil, err
	}
	v.timeline.VMCreated = time.Now()
	return v, nil
}

// checkVCPUCount refuses more vCPUs than this host's KVM allows.
func (v *VM) checkVCPUCount() error {
	if max := v.sys.MaxVCPUs(); v.cfg.CPUs > max {
		return fmt.Errorf("%d vCPUs requested, KVM allows %d on this host", v.cfg.CPUs, max)
	}
	return nil
}

// setupPlatform creates the in-kernel interrupt controllers and starts
// creating the PIT (startPIT).
func (v *VM) setupPlatform() error {
	if err := v.createIRQChip(); err != nil {
		return err
	}
	v.startPIT()
	return nil
}

// createIRQChip gives KVM the addresses Intel VT's real-mode support needs
// and creates the in-kernel PIC and IOAPIC, which must exist before any
// vCPU is created (each vCPU's LAPIC is created with it).
func (v *VM) createIRQChip() error {
	if err := v.vm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err := v.vm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return err
	}
	return v.vm.CreateIRQChip()
}

// startPIT starts creating the PIT on a goroutine of its own: it may take
// from a hundred microseconds to several milliseconds (it starts a kernel
// thread) and is needed only once the vCPUs run, so waitPIT collects it.
// KVM creates it under the VM's lock, which KVM_CREATE_VCPU takes too: a
// vCPU created meanwhile waits for the kernel thread.
// Precondition: the irqchip exists (createIRQChip).
func (v *VM) startPIT() {
	v.pitDone = make(chan error, 1)
	go func() { v.pitDone <- v.vm.CreatePIT2() }()
}

// waitPIT returns once the PIT exists (or failed to be created).
func (v *VM) waitPIT() error {
	if v.pitDone == nil {
		return nil
	}
	err := <-v.pitDone
	v.pitDone = nil
	return err
}

// askSupportedCPUID starts KVM_GET_SUPPORTED_CPUID on a goroutine of its
// own, once; supportedCPUID collects the answer, and Close waits for it.
func (v *VM) askSupportedCPUID() {
	if v.cpuidDone != nil {
		return
	}
	v.cpuidDone = make(chan struct{})
	go func() {
		defer close(v.cpuidDone)
		v.cpuidSupported, v.cpuidErr = v.sys.SupportedCPUID()
	}()
}

// supportedCPUID returns what KVM_GET_SUPPORTED_CPUID answered, asking
// now if nothing has asked yet.
func (v *VM) supportedCPUID() ([]kvm.CPUIDEntry, error) {
	v.askSupportedCPUID()
	<-v.cpuidDone
	return v.cpuidSupported, v.cpuidErr
}

func (v *VM) setupMemory(mc memory.Config) error {
	mem, err := memory.New(mc)
	if err != nil {
		return err
	}
	v.mem = mem
	for _, w := range mem.Warnings() {
		v.logger().Warn(w)
	}
	var flags uint32
	if v.cfg.TrackDirtyPages {
		flags |= kvm.MemLogDirtyPages
	}
	for i, r := range mem.Regions() {
		if err := v.vm.SetUserMemoryRegion(uint32(i), flags, uint64(r.Guest), r.Host); err != nil {
			return err
		}
	}
	return nil
}

func (v *VM) loadKernel() error {
	k, err := hostfile.Open("kernel", v.cfg.KernelPath)
	if err != nil {
		return err
	}
	defer k.Close()
	kst, err := k.Stat()
	if err != nil {
		return fmt.Errorf("stat kernel %s: %w", v.cfg.KernelPath, err)
	}
	bc := boot.Config{Kernel: k, KernelSize: kst.Size(), Cmdline: v.cfg.Cmdline, CPUs: v.cfg.CPUs, Protocol: v.cfg.Protocol}
	if v.cfg.InitrdPath != "" {
		f, err := hostfile.Open("initrd", v.cfg.InitrdPath)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat initrd %s: %w", v.cfg.InitrdPath, err)
		}
		bc.Initrd, bc.InitrdSize = f, st.Size()
	}
	entry, err := boot.Load(v.mem, bc)
	if err != nil {
		return fmt.Errorf("load kernel %s: %w", v.cfg.KernelPath, err)
	}
	v.entry = entry
	return nil
}

// irqLine raises an edge on a GSI of the in-kernel PIC and IOAPIC.
type irqLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l irqLine) Trigger() error {
	if err := l.vm.IRQLine(l.irq, true); err != nil {
		return err
	}
	return l.vm.IRQLine(l.irq, false)
}

func (v *VM) setupDevices(id genid.ID) error {
	v.console = &firstWriteRecorder{w: v.cfg.Console}
	if v.cfg.Console == nil {
		v.console.w = io.Discard
	}
	v.uart = uart.New(v.console, irqLine{v.vm, uart.COM1IRQ})
	v.i8042 = i8042.New(func() { v.stop(v.guestReset(StopReset, nil)) },
		i8042.WithKeyboardInterrupt(irqLine{v.vm, i8042.KeyboardIRQ}))
	opts := []bootmarker.Option{bootmarker.WithDelay(v.cfg.MarkerDelay)}
	if v.cfg.OnMarker != nil {
		opts = append(opts, bootmarker.WithNotify(v.cfg.OnMarker))
	}
	v.markers = bootmarker.New(v.cfg.Origin, opts...)
	v.genid = genid.New(id)
	for _, d := range []struct {
		name       string
		base, size uint64
		dev        bus.Device
	}{
		{"com1", uart.COM1Port, uart.Size, v.uart},
		{"i8042", i8042.Base, i8042.Size, v.i8042},
		{"boot-marker", marker.Port, 1, v.markers},
		{"generation-id", genid.Port, genid.Size, v.genid},
	} {
		if err := v.pio.Insert(d.name, d.base, d.size, d.dev); err != nil {
			return err
		}
	}
	return nil
}

// createVCPUs creates the vCPUs of cfg.CPUs that do not exist yet.
func (v *VM) createVCPUs() error {
	for i := len(v.vcpus); i < v.cfg.CPUs; i++ {
		if err := v.createVCPU(i); err != nil {
			return err
		}
	}
	v.work = make([]*vcpuWork, len(v.vcpus))
	v.cpuid = make([][]kvm.CPUIDEntry, len(v.vcpus))
	return nil
}

// createVCPU creates vCPU i, the next one.
// Precondition: vCPUs 0 to i-1 exist, and the irqchip (createIRQChip).
func (v *VM) createVCPU(i int) error {
	c, err := v.vm.CreateVCPU(i)
	if err != nil {
		return err
	}
	v.vcpus = append(v.vcpus, c)
	return nil
}

// setupBootVCPUs gives fresh vCPUs their CPUID, MSRs, FPU and LAPIC wiring,
// and the boot processor the kernel's entry state.
func (v *VM) setupBootVCPUs() error {
	supported, err := v.supportedCPUID()
	if err != nil {
		return err
	}
	for i, c := range v.vcpus {
		leaves, err := cpu.Leaves(supported, cpu.CPUIDConfig{Template: v.cfg.CPUTemplate, Mask: v.cfg.CPUIDMask, CPUs: v.cfg.CPUs, APICID: i})
		if err != nil {
			return err
		}
		if err := c.SetCPUID(leaves); err != nil {
			return err
		}
		v.cpuid[i] = leaves
		if err := c.SetMSRs(cpu.BootMSRs()); err != nil {
			return err
		}
		if err := c.SetFPU(cpu.BootFPU()); err != nil {
			return err
		}
		lapic, err := c.LAPIC()
		if err != nil {
			return err
		}
		cpu.WireLocalInterrupts(&lapic)
		if err := c.SetLAPIC(lapic); err != nil {
			return err
		}
		// Only the boot processor starts at the kernel entry; the others
		// wait in the in-kernel LAPIC for the guest's INIT/SIPI.
		if i == 0 {
			if err := setEntryState(c, v.entry); err != nil {
				return err
			}
		}
	}
	return nil
}

// logger is where the VM's warnings go.
func (v *VM) logger() *slog.Logger {
	if v.cfg.Logger != nil {
		return v.cfg.Logger
	}
	return slog.Default()
}

// Memory exposes guest memory (for snapshots and tests).
func (v *VM) Memory() *memory.Memory { return v.mem }

// Markers returns the boot-marker device.
func (v *VM) Markers() *bootmarker.Device { return v.markers }

// Timeline returns the VMM-side boot timestamps; FirstOutput is when the
// guest first wrote to the console.
func (v *VM) Timeline() (Timeline, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.timeline, v.console.First()
}

// UART returns the serial console device.
func (v *VM) UART() *uart.UART { return v.uart }

// Run starts every vCPU and blocks until the VM stops: the guest powers off
// or dies, a vCPU fails, or ctx is cancelled.
func (v *VM) Run(ctx context.Context) Result {
	v.mu.Lock()
	if v.started {
		v.mu.Unlock()
		return Result{Reason: StopError, Err: errors.New("VM already started")}
	}
	v.started = true
	v.running = len(v.vcpus)
	v.pause = v.startPaused
	v.mu.Unlock()

	// Confined before anything of the guest runs: the devices' workers
	// and the vCPUs then add their own filters as their threads start.
	if c := v.cfg.Confinement; c != nil {
		if err := v.confine(c); err != nil {
			err = fmt.Errorf("confine the VMM: %w", err)
			v.stop(Result{Reason: StopError, Err: err})
			v.mu.Lock()
			v.running = 0
			v.mu.Unlock()
			v.closeDevices()
			close(v.done)
			return Result{Reason: StopError, Err: err}
		}
	}
	stopFeed := v.feedConsole()
	defer stopFeed()
	// A restored VM's devices wait, paused, until it runs.
	if v.restored && !v.startPaused {
		v.resumeDevices()
	}
	var wg sync.WaitGroup
	for i := range v.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.runVCPU(i)
		}()
	}
	stopCtx := context.AfterFunc(ctx, func() { v.stop(Result{Reason: StopCanceled}) })
	defer stopCtx()
	wg.Wait()
	// A stopped guest needs no devices; closing them now also removes
	// their host sockets, which a process exiting without Close leaves.
	if err := v.closeDevices(); err != nil {
		v.logger().Warn("closing virtio devices", "err", err)
	}
	close(v.done)
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.result
}

// feedConsole copies console input into the UART on its own goroutine and
// returns the function that stops it. A reader that takes deadlines (a
// pipe, a terminal) is interrupted and the goroutine waited for; another
// reader cannot be interrupted, so the goroutine is left to end at its next
// read, and delivers nothing more.
func (v *VM) feedConsole() (stop func()) {
	in := v.cfg.ConsoleInput
	if in == nil {
		return func() {}
	}
	done := make(chan struct{})
	var stopped atomic.Bool
	go func() {
		defer close(done)
		v.uart.Feed(in, func() bool {
			if stopped.Load() {
				return false
			}
			time.Sleep(time.Millisecond)
			return !stopped.Load()
		})
	}()
	return func() {
		stopped.Store(true)
		d, ok := in.(interface{ SetReadDeadline(time.Time) error })
		if ok && d.SetReadDeadline(time.Now()) == nil {
			<-done
		}
	}
}

// stop records the first reason the VM stops for and kicks every vCPU out of
// the guest. Safe to call from any goroutine, including vCPU threads.
func (v *VM) stop(r Result) {
	v.mu.Lock()
	if v.stopping.Load() {
		v.mu.Unlock()
		return
	}
	v.result = r
	v.stopping.Store(true)
	v.cond.Broadcast()
	v.mu.Unlock()
	for _, c := range v.vcpus {
		c.Kick()
	}
}

// Stop asks the VM to stop and waits until every vCPU has left the guest.
func (v *VM) Stop() {
	v.stop(Result{Reason: StopCanceled})
	v.mu.Lock()
	started := v.started
	v.mu.Unlock()
	if started {
		<-v.done
	}
}

// Pause stops every vCPU at its next exit and returns once all are parked
// outside the guest, so their state can be read consistently.
func (v *VM) Pause() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.started || v.stopping.Load() {
		return errors.New("the VM is not running")
	}
	if v.pause {
		return nil
	}
	v.pause = true
	for _, c := range v.vcpus {
		c.Kick()
	}
	for v.parked < v.running && !v.stopping.Load() {
		v.cond.Wait()
	}
	if v.stopping.Load() {
		return errors.New("the VM stopped while pausing")
	}
	// Tell a kvmclock guest it was paused, as Firecracker does on every
	// pause, so its soft-lockup watchdog does not take the pause for a
	// hang. Guests without kvmclock refuse it, which is fine. The devices
	// stop too: a paused VM's memory and queues must stand still for a
	// snapshot.
	v.mu.Unlock()
	v.pauseDevices()
	v.onEachVCPU(func(c *kvm.VCPU) error {
		c.KVMClockCtrl()
		return nil
	})
	v.mu.Lock()
	return nil
}

// Resume lets paused vCPUs enter the guest again.
func (v *VM) Resume() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.started || v.stopping.Load() {
		return errors.New("the VM is not running")
	}
	if v.pause {
		v.resumeDevices()
	}
	v.pause = false
	v.cond.Broadcast()
	return nil
}

// Paused reports whether the VM is paused.
func (v *VM) Paused() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pause
}

// parkIfPaused blocks a vCPU while a pause is in force, running any work
// sent to it meanwhile. It returns false when the VM is stopping.
func (v *VM) parkIfPaused(i int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.pause {
		return !v.stopping.Load()
	}
	v.parked++
	v.cond.Broadcast()
	for v.pause && !v.stopping.Load() {
		if w := v.work[i]; w != nil {
			v.work[i] = nil
			v.mu.Unlock()
			w.done <- w.fn(v.vcpus[i])
			v.mu.Lock()
			continue
		}
		v.cond.Wait()
	}
	v.parked--
	return !v.stopping.Load()
}

// onEachVCPU runs fn on every vCPU's own thread while the VM is paused and
// returns the first error. KVM wants a vCPU's state read and written by the
// thread that runs it, and a parked vCPU is guaranteed out of the guest.
func (v *VM) onEachVCPU(fn func(*kvm.VCPU) error) error {
	v.mu.Lock()
	if !v.pause || v.parked < v.running || v.stopping.Load() {
		v.mu.Unlock()
		return errors.New("the VM must be paused")
	}
	var works []*vcpuWork
	for i := range v.vcpus {
		w := &vcpuWork{fn: fn, done: make(chan error, 1)}
		v.work[i] = w
		works = append(works, w)
	}
	v.cond.Broadcast()
	v.mu.Unlock()
	var errs []error
	for _, w := range works {
		errs = append(errs, <-w.done)
	}
	return errors.Join(errs...)
}

// runVCPU is one vCPU's thread. It stays locked to its OS thread for life
// (and the thread exits with it): KVM's per-vCPU state and the kick signal
// are tied to the thread.
func (v *VM) runVCPU(i int) {
	runtime.LockOSThread()
	c := v.vcpus[i]
	defer func() {
		c.ReleaseThread()
		v.mu.Lock()
		v.running--
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	if err := confineThread(sandbox.RoleVCPU); err != nil {
		v.stop(Result{Reason: StopError, Err: fmt.Errorf("vCPU %d: %w", i, err)})
		return
	}
	first := true
	for {
		// Clear immediate_exit before looking at the flags: a kick that
		// lands after this point sets it again and KVM_RUN returns at
		// once, so no stop or pause request can be missed.
		c.SetImmediateExit(false)
		if !v.parkIfPaused(i) {
			return
		}
		if first && i == 0 {
			v.mu.Lock()
			v.timeline.GuestEntry = time.Now()
			v.mu.Unlock()
		}
		first = false
		exit, err := c.Run()
		if err != nil {
			v.stop(Result{Reason: StopError, Err: err})
			return
		}
		if err := v.handleExit(c, exit); err != nil {
			v.stop(Result{Reason: StopError, Err: err})
			return
		}
	}
}

func (v *VM) handleExit(c *kvm.VCPU, exit kvm.Exit) error {
	if r := exit.Reason(); int(r) < len(v.exits) {
		v.exits[r].Add(1)
	}
	switch e := exit.(type) {
	case kvm.IOExit:
		for off := 0; off+e.Size <= len(e.Data); off += e.Size {
			chunk := e.Data[off : off+e.Size]
			if e.Out {
				v.pio.Write(uint64(e.Port), chunk)
			} else {
				v.pio.Read(uint64(e.Port), chunk)
			}
		}
	case kvm.MMIOExit:
		if e.Write {
			v.mmio.Write(e.Addr, e.Data)
		} else {
			v.mmio.Read(e.Addr, e.Data)
		}
	case kvm.IntrExit:
	case kvm.ShutdownExit:
		// Linux's reboot=t resets this way after its shutdown, so the
		// markers decide here too.
		v.stop(v.guestReset(StopTripleFault, func() error {
			return fmt.Errorf("vCPU %d: guest triple fault\n%s", c.ID, dumpVCPU(c, v.mem))
		}))
	case kvm.HaltExit:
		// With the in-kernel LAPIC, HLT waits in the kernel; reaching
		// here means the guest halted with nothing to wake it.
		v.stop(v.guestReset(StopError, func() error {
			return fmt.Errorf("vCPU %d: the guest halted with nothing to wake it\n%s", c.ID, dumpVCPU(c, v.mem))
		}))
	case kvm.SystemEventExit:
		if e.Type == kvm.SystemEventCrash {
			v.stop(Result{Reason: StopPanic, Err: fmt.Errorf("vCPU %d: the guest reported a crash", c.ID)})
			return nil
		}
		v.stop(v.guestReset(StopReset, nil))
	case kvm.InternalErrorExit:
		what := "KVM internal error"
		if e.Suberror == kvm.InternalErrorEmulation {
			what = "emulation failure (KVM cannot emulate the instruction at RIP)"
		}
		return fmt.Errorf("vCPU %d: %s, suberror %d, data %#x\n%s", c.ID, what, e.Suberror, e.Data, dumpVCPU(c, v.mem))
	case kvm.FailEntryExit:
		return fmt.Errorf("vCPU %d: VM entry failed, hardware reason %#x\n%s", c.ID, e.HardwareReason, dumpVCPU(c, v.mem))
	default:
		return fmt.Errorf("vCPU %d: unhandled exit %s\n%s", c.ID, exit.Reason(), dumpVCPU(c, v.mem))
	}
	return nil
}

// guestReset classifies a guest's reset by what it announced: a panic
// marker makes it a panic, a shutdown marker a power-off, and otherwise it
// is unannounced, reported as reason with the error detail describes.
func (v *VM) guestReset(unannounced StopReason, detail func() error) Result {
	switch {
	case v.markers.Seen(marker.KernelPanic):
		return Result{Reason: StopPanic, Err: errors.New("the guest kernel panicked (see its console for the message)")}
	case v.markers.Seen(marker.Shutdown):
		return Result{Reason: StopPowerOff}
	}
	r := Result{Reason: unannounced}
	if detail != nil {
		r.Err = detail()
	}
	return r
}

// Close releases every host resource of the VM. It must not be called while
// Run is still running.
func (v *VM) Close() error {
	errs := []error{v.closeDevices()}
	// The set-up's own goroutines use the VM and /dev/kvm: let them end
	// before their fds are closed (and their numbers reused).
	if v.cpuidDone != nil {
		<-v.cpuidDone
	}
	v.prefetching.Wait()
	errs = append(errs, v.waitPIT())
	for _, c := range v.vcpus {
		errs = append(errs, c.Close())
	}
	v.vcpus = nil
	if v.vm != nil {
		errs = append(errs, v.vm.Close())
		v.vm = nil
	}
	if v.mem != nil {
		errs = append(errs, v.mem.Close())
		v.mem = nil
	}
	if v.casLease != nil {
		errs = append(errs, v.casLease.Release())
		v.casLease = nil
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
		v.sys = nil
	}
	return errors.Join(errs...)
}

// firstWriteRecorder passes console output through and remembers when the
// guest first wrote, one of the boot-timeline stages.
type firstWriteRecorder struct {
	w     io.Writer
	mu    sync.Mutex
	first time.Time
}

func (f *firstWriteRecorder) Write(p []byte) (int, error) {
	f.mu.Lock()
	if f.first.IsZero() {
		f.first = time.Now()
	}
	f.mu.Unlock()
	return f.w.Write(p)
}

func (f *firstWriteRecorder) First() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.first
}
