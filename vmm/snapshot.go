package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm/cpu"
	"github.com/voltvmm/volt/vmm/devices/genid"
	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/snapshot"
	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// SnapshotType selects a full or a diff snapshot.
type SnapshotType string

const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotParams says where a snapshot goes.
type SnapshotParams struct {
	StatePath string
	MemPath   string
	Type      SnapshotType // "" means Full
	// AfterStep, if set, is called after each step of writing the files
	// (snapshot.CreateSteps); tests kill the VMM there.
	AfterStep func(snapshot.CreateStep)
	// CASStore, when set, stores the memory in this CAS store as a
	// manifest instead of MemPath (which must then be empty); CASRef names
	// it ("" means snapshot.DefaultMemoryRef), CASChunkSize sets its chunk
	// size (0: the store's default).
	CASStore     string
	CASRef       string
	CASChunkSize int64
}

// CreateSnapshot writes the VM's state and memory. The VM must be paused;
// it stays paused. A diff snapshot holds only the pages written since the
// previous snapshot of this VM (or the snapshot it was restored from),
// which it names as its base, and needs TrackDirtyPages.
func (v *VM) CreateSnapshot(ctx context.Context, p SnapshotParams) error {
	switch {
	case p.StatePath == "":
		return errors.New("snapshot needs a state path")
	case p.CASStore == "" && p.MemPath == "":
		return errors.New("snapshot needs a memory path or a CAS store")
	case p.CASStore != "" && p.MemPath != "":
		return errors.New("snapshot memory goes to a file or to a CAS store, not both")
	}
	diff := false
	switch p.Type {
	case "", SnapshotFull:
	case SnapshotDiff:
		if !v.cfg.TrackDirtyPages {
			return errors.New("diff snapshots need dirty-page tracking, enabled when the VM was created (track_dirty_pages)")
		}
		if v.snapshotBase.IsZero() {
			return errors.New("a Diff snapshot needs a base: take a Full snapshot of this VM first (or restore it from one)")
		}
		diff = true
	default:
		return fmt.Errorf("unknown snapshot type %q (Full or Diff)", p.Type)
	}
	if diff && p.CASStore != "" {
		return errors.New("a Diff snapshot cannot go to the CAS: its memory is only a base's difference; take a Full one")
	}
	// Refuse bad targets before any work, and before the dirty log is
	// read (which clears it).
	targets := []struct{ what, path string }{{"snapshot_path", p.StatePath}}
	if p.MemPath != "" {
		targets = append(targets, struct{ what, path string }{"mem_file_path", p.MemPath})
	}
	for _, t := range targets {
		if err := hostfile.CheckCreateTarget(t.what, t.path); err != nil {
			return err
		}
		if err := v.checkSnapshotTarget(t.what, t.path, false); err != nil {
			return err
		}
	}
	if p.CASStore != "" {
		if err := v.checkSnapshotTarget("CAS store", p.CASStore, true); err != nil {
			return err
		}
	}
	var store *cas.Store
	if p.CASStore != "" {
		var err error
		if store, err = cas.Open(p.CASStore); err != nil {
			return fmt.Errorf("CAS store %s: %w", p.CASStore, err)
		}
	}
	st, err := v.captureState()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var dirty []uint64
	if v.cfg.TrackDirtyPages {
		// Reading the log also clears it, so the next diff snapshot is
		// relative to this one, whichever kind this is.
		if dirty, err = v.dirtyBitmap(); err != nil {
			return err
		}
	}
	if diff {
		st.Memory.Diff, st.Memory.DirtyBitmap, st.Memory.BaseID = true, dirty, v.snapshotBase
	}
	after := p.AfterStep
	if after == nil {
		after = v.cfg.AfterSnapshotStep
	}
	var id snapshot.MemoryID
	if store != nil {
		id, _, err = snapshot.CreateInCAS(ctx, snapshot.CASParams{StatePath: p.StatePath, Store: store, Ref: p.CASRef,
			ChunkSize: p.CASChunkSize, State: st, Memory: v.mem, AfterStep: after})
	} else {
		id, err = snapshot.Create(snapshot.CreateParams{StatePath: p.StatePath, MemPath: p.MemPath, State: st, Memory: v.mem, AfterStep: after})
	}
	if err != nil {
		return err
	}
	v.snapshotBase = id
	return nil
}

// dirtyBitmap returns KVM's dirty log for the whole memory, one bit per page
// in memory-file order.
func (v *VM) dirtyBitmap() ([]uint64, error) {
	pages := v.mem.Size() / memory.PageSize
	out := make([]uint64, (pages+63)/64)
	for slot, r := range v.mem.Regions() {
		n := r.Size() / memory.PageSize
		bm := make([]uint64, (n+63)/64)
		if err := v.vm.DirtyLog(uint32(slot), bm); err != nil {
			return nil, err
		}
		first := r.FileOffset / memory.PageSize
		for p := range n {
			if bm[p/64]&(1<<(p%64)) != 0 {
				q := first + p
				out[q/64] |= 1 << (q % 64)
			}
		}
	}
	// KVM logs the guest's writes only; the devices' own come from here.
	if v.devMem != nil {
		v.devMem.takeDirty(out)
	}
	return out, nil
}

// captureState reads every piece of VM state into plain structs.
func (v *VM) captureState() (*snapshot.VMState, error) {
	msrIndexes, err := v.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	st := &snapshot.VMState{
		Machine: snapshot.Machine{
			CPUs: v.cfg.CPUs, MemorySize: v.cfg.MemorySize, HugePages: v.cfg.HugePages,
			CPUTemplate: v.cfg.CPUTemplate, CPUIDMask: v.cfg.CPUIDMask,
			KernelPath: v.cfg.KernelPath, Cmdline: v.cfg.Cmdline, TrackDirtyPages: v.cfg.TrackDirtyPages,
		},
		Memory: snapshot.MemoryState{Size: v.mem.Size()},
		VCPUs:  make([]snapshot.VCPUState, len(v.vcpus)),
	}
	for _, r := range v.mem.Regions() {
		st.Memory.Regions = append(st.Memory.Regions, snapshot.Region{Guest: uint64(r.Guest), Size: r.Size(), FileOffset: r.FileOffset})
	}
	// What the guest has mapped now is what its restores prefetch. Without
	// it a restore is as correct, only slower to its first answer.
	if ws, err := v.mem.Resident(); err != nil {
		v.logger().Warn("snapshot without a working set: its restores will not prefetch", "err", err)
	} else {
		st.Memory.WorkingSet = memory.Coalesce(ws, memory.MaxWorkingSetRuns)
	}
	err = v.onEachVCPU(func(c *kvm.VCPU) error {
		s, err := saveVCPU(c, msrIndexes)
		if err != nil {
			return err
		}
		s.CPUID = v.cpuid[c.ID]
		st.VCPUs[c.ID] = s
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("save vCPU state: %w", err)
	}
	for _, chip := range []struct {
		id  uint32
		dst *kvm.IRQChip
	}{{kvm.IRQChipPICMaster, &st.IRQChip.PICMaster}, {kvm.IRQChipPICSlave, &st.IRQChip.PICSlave}, {kvm.IRQChipIOAPIC, &st.IRQChip.IOAPIC}} {
		if *chip.dst, err = v.vm.IRQChip(chip.id); err != nil {
			return nil, err
		}
	}
	if st.PIT, err = v.vm.PIT(); err != nil {
		return nil, err
	}
	if st.Clock, err = v.vm.Clock(); err != nil {
		return nil, err
	}
	if st.Devices.Virtio, err = v.virtioStates(); err != nil {
		return nil, err
	}
	st.Devices.UART = v.uart.State()
	st.Devices.I8042 = v.i8042.State()
	st.Devices.BootMarker = v.markers.State()
	st.Devices.GenID = v.genid.State()
	return st, nil
}

// saveVCPU reads one vCPU's state. Runs on the vCPU's thread.
func saveVCPU(c *kvm.VCPU, msrIndexes []uint32) (snapshot.VCPUState, error) {
	s := snapshot.VCPUState{ID: c.ID}
	// An exit that userspace already handled (an IN's data, an MMIO read)
	// is completed by KVM on the next KVM_RUN; running once with
	// immediate_exit finishes it without entering the guest, so the saved
	// registers include its result.
	c.SetImmediateExit(true)
	if _, err := c.Run(); err != nil {
		return s, err
	}
	c.SetImmediateExit(false)
	var err error
	if s.MPState, err = c.MPState(); err != nil {
		return s, err
	}
	if s.Regs, err = c.Regs(); err != nil {
		return s, err
	}
	if s.Sregs, err = c.Sregs(); err != nil {
		return s, err
	}
	if s.XSave, err = c.XSave(); err != nil {
		return s, err
	}
	if s.XCRs, err = c.XCRs(); err != nil {
		return s, err
	}
	if s.DebugRegs, err = c.DebugRegs(); err != nil {
		return s, err
	}
	if s.LAPIC, err = c.LAPIC(); err != nil {
		return s, err
	}
	if s.TSCKHz, err = c.TSCKHz(); err != nil {
		return s, err
	}
	if s.MSRs, err = readMSRs(c, msrIndexes); err != nil {
		return s, err
	}
	// Events last: reading MSRs cannot inject anything, but events are the
	// most volatile state and belong to the instant of the snapshot.
	if s.Events, err = c.Events(); err != nil {
		return s, err
	}
	return s, nil
}

// readMSRs reads every MSR in the list KVM reports, skipping those this
// vCPU refuses (KVM lists MSRs for features the guest's CPUID may not have).
func readMSRs(c *kvm.VCPU, indexes []uint32) ([]kvm.MSR, error) {
	var out []kvm.MSR
	pending := make([]kvm.MSR, len(indexes))
	for i, idx := range indexes {
		pending[i].Index = idx
	}
	for len(pending) > 0 {
		err := c.MSRs(pending)
		if err == nil {
			return append(out, pending...), nil
		}
		// The kernel processes entries in order and stops at the first
		// it cannot read: keep those before it, drop it, go on.
		n := 0
		for n < len(pending) {
			one := []kvm.MSR{pending[n]}
			if c.MSRs(one) != nil {
				break
			}
			out = append(out, one[0])
			n++
		}
		if n == len(pending) {
			return out, nil
		}
		pending = pending[n+1:]
	}
	return out, nil
}

// RestoreConfig describes a restore.
type RestoreConfig struct {
	StatePath string
	MemPath   string
	// Resume starts the vCPUs at once; otherwise Run parks them until
	// Resume is called.
	Resume       bool
	Console      io.Writer
	ConsoleInput io.Reader
	Origin       time.Time
	// TrackDirtyPages overrides the snapshot's setting when set (Firecracker's
	// enable_diff_snapshots on load).
	TrackDirtyPages *bool
	// Logger and AfterSnapshotStep are as in Config.
	Logger            *slog.Logger
	AfterSnapshotStep func(snapshot.CreateStep)
	// Overrides change the host side of the restored devices.
	Overrides VirtioOverrides
	// CASStore is the store that holds the memory of a snapshot whose
	// memory is in the CAS (MemPath is then unused).
	CASStore string
	// Confinement is as in Config.
	Confinement *Confinement
	// Prefetch says how the snapshot's working set is brought in while the
	// VM is restored; nil means DefaultPrefetch.
	Prefetch *memory.Prefetch
	// VsockRequestTimeout is as in Config: the restored vsock device's.
	VsockRequestTimeout time.Duration
}

// DefaultPrefetch is how a restore brings in the snapshot's working set
// unless RestoreConfig.Prefetch says otherwise: not at all. Measured with
// BenchmarkRestoreFirstAnswer (a probe snapshot whose working set is 2074
// pages, 8 MiB, of 128 MiB; docs/performance.md): with the memory file in
// the page cache neither prefetch made the first answer faster (each
// page's cost is KVM's fault, not the host's), populate-read made an echo
// 8 ms slower; with the file dropped from the cache, willneed took the
// answer that reads all 2048 pages from a median 132 to 126 ms, and made
// an echo that reads few of them 10 ms slower (its reads queue behind the
// prefetch's). A working set recorded as every page the guest had mapped
// is too coarse to prefetch by default; a recorded first request's (REAP)
// would not be.
const DefaultPrefetch = memory.PrefetchNone

// startPrefetch brings in the working set st recorded on a goroutine of
// its own, while the rest of the VM is restored and its vCPUs start: a
// guest touching a page before its prefetch only takes the fault itself.
// Close waits for it before unmapping the memory.
func (v *VM) startPrefetch(rc RestoreConfig, st *snapshot.VMState) {
	how := DefaultPrefetch
	if rc.Prefetch != nil {
		how = *rc.Prefetch
	}
	ws := st.Memory.WorkingSet
	if how == memory.PrefetchNone || len(ws) == 0 {
		return
	}
	mem, log := v.mem, v.logger()
	v.prefetching.Go(func() {
		if err := mem.Prefetch(ws, how); err != nil {
			log.Warn("prefetching the snapshot's working set", "err", err)
		}
	})
}

// Restore creates a VM from a snapshot: its memory file is mapped
// MAP_PRIVATE, so pages fault in on demand and clones of the same snapshot
// share the page cache; every piece of state is verified before use. The VM
// gets a new generation ID, so the guest can tell it is a clone.
func Restore(ctx context.Context, rc RestoreConfig) (_ *VM, err error) {
	if rc.Origin.IsZero() {
		rc.Origin = time.Now()
	}
	if rc.VsockRequestTimeout != 0 {
		if err := vsock.ValidateRequestTimeout(rc.VsockRequestTimeout); err != nil {
			return nil, err
		}
	}
	// Reading and verifying the state file and creating the VM each take
	// a few hundred microseconds and need nothing from each other, so they
	// overlap.
	type decoded struct {
		st  *snapshot.VMState
		err error
	}
	stateCh := make(chan decoded, 1)
	go func() {
		st, err := snapshot.ReadStateFile(rc.StatePath)
		stateCh <- decoded{st, err}
	}()
	v, err := newShell(Config{Origin: rc.Origin, VsockRequestTimeout: rc.VsockRequestTimeout}, false)
	if err != nil {
		<-stateCh
		return nil, err
	}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	// The memory file describes itself (its trailer: size, ID, kind), so it
	// is mapped and registered while the state decodes; the pair is checked
	// once the state is in, before anything of the guest runs. Only whether
	// KVM must log dirty pages comes from the state alone, and the API
	// always says it.
	var (
		st       *snapshot.VMState
		stateErr error
		received bool
	)
	// waitState waits for the decode; every return path calls it, so the
	// decoding goroutine never outlives Restore.
	waitState := func() error {
		if !received {
			d := <-stateCh
			st, stateErr, received = d.st, d.err, true
		}
		return stateErr
	}
	if rc.CASStore != "" {
		return v.restoreFromCAS(ctx, rc, waitState, func() (*snapshot.VMState, error) { return st, stateErr })
	}
	memFile, trailer, err := snapshot.OpenRestorableMemory(rc.MemPath)
	if err != nil {
		// A bad state file is the first thing to report: a caller who
		// mistyped the directory is told about its state file.
		if serr := waitState(); serr != nil {
			return nil, serr
		}
		if st.Memory.Manifest != "" {
			return nil, fmt.Errorf("restore %s: %w", rc.StatePath, snapshot.ErrNoStore)
		}
		return nil, err
	}
	if rc.TrackDirtyPages != nil {
		v.cfg.TrackDirtyPages = *rc.TrackDirtyPages
	} else {
		if err := waitState(); err != nil {
			memFile.Close()
			return nil, err
		}
		v.cfg.TrackDirtyPages = st.Machine.TrackDirtyPages
	}
	if err := v.setupMemory(memory.Config{Size: trailer.Size, Backing: memory.PrivateFile, File: memFile}); err != nil {
		waitState()
		return nil, fmt.Errorf("restore %s: %w", rc.MemPath, err)
	}
	v.timeline.MemoryReady = time.Now()
	v.askSupportedCPUID()
	if err := v.createIRQChip(); err != nil {
		waitState()
		return nil, err
	}
	// The state's decode is still running here (about a millisecond, the
	// longest step before the guest's state can be written), and every
	// snapshot has a vCPU 0: it is created now, and the PIT started after
	// it (KVM builds the PIT, and starts its kernel thread, under the VM
	// lock that KVM_CREATE_VCPU takes), both while the decode finishes.
	// The other vCPUs are created once the state says how many.
	if err := v.createVCPU(0); err != nil {
		waitState()
		return nil, err
	}
	v.startPIT()
	if err := waitState(); err != nil {
		return nil, err
	}
	if st.Memory.Diff {
		return nil, errors.New("a diff snapshot cannot be restored on its own: merge it onto its base first")
	}
	if err := trailer.Matches(rc.MemPath, st.Memory.ID, st.Memory.Size); err != nil {
		return nil, err
	}
	v.startPrefetch(rc, st)
	return v, v.restoreState(ctx, rc, st)
}

// restoreState puts everything but memory back from st: the VM's
// configuration, the interrupt controllers, the clock, the devices and the
// vCPUs. Memory and the irqchip are set up already.
func (v *VM) restoreState(ctx context.Context, rc RestoreConfig, st *snapshot.VMState) error {
	m := st.Machine
	v.cfg = Config{
		KernelPath: m.KernelPath, Cmdline: m.Cmdline, MemorySize: m.MemorySize, HugePages: false,
		CPUs: m.CPUs, CPUTemplate: m.CPUTemplate, CPUIDMask: m.CPUIDMask, TrackDirtyPages: v.cfg.TrackDirtyPages,
		Console: rc.Console, ConsoleInput: rc.ConsoleInput, Origin: rc.Origin,
		Logger: rc.Logger, AfterSnapshotStep: rc.AfterSnapshotStep, Confinement: rc.Confinement,
	}
	if err := v.checkVCPUCount(); err != nil {
		return err
	}
	// The host's CPU is checked last: KVM_GET_SUPPORTED_CPUID, asked on a
	// goroutine since KVM was opened, takes about a millisecond here and
	// now overlaps the whole restore; nothing of the guest has run when it
	// is checked. A step that a host lacking features fails first (KVM
	// refusing the XSAVE state of a larger CPU) reports those features,
	// not its own error.
	err := v.restoreMachine(rc, st)
	if cerr := v.checkHostCPU(rc, st); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	v.timeline.StateRestored = time.Now()
	v.startPaused = !rc.Resume
	return ctx.Err()
}

// checkHostCPU refuses a snapshot whose CPU has features this host's KVM
// does not support.
func (v *VM) checkHostCPU(rc RestoreConfig, st *snapshot.VMState) error {
	supported, err := v.supportedCPUID()
	if err != nil {
		return err
	}
	if missing := cpu.MissingFeatures(st.VCPUs[0].CPUID, supported); len(missing) > 0 {
		return fmt.Errorf("restore %s: the snapshot's CPU has features this host's KVM lacks: %s", rc.StatePath, strings.Join(missing, ", "))
	}
	return nil
}

// restoreMachine is restoreState's work: the interrupt controllers, the
// clock, the devices, the vCPUs and the PIT. The vCPUs are created and
// their state written back on a goroutine of their own while this one
// restores the VM-wide state and the devices: the two touch disjoint
// state, in KVM and here, and each takes a few hundred microseconds.
// Once the vCPUs exist the PIT's creation starts beside the rest (it
// waits for a kernel thread) and is collected last.
//
// KVM's order is kept within each branch: the irqchip exists before any
// vCPU (createIRQChip), and a vCPU's CPUID is set before its MSRs and
// registers, its LAPIC after its creation (restoreVCPU). Across the
// branches KVM needs no order: Firecracker writes the vCPUs' state before
// the PIT, clock, PICs and IOAPIC, this VMM wrote it after them, and the
// IOAPIC's and each LAPIC's restore both bring the RTC's EOI tracking up
// to date under the IOAPIC's lock whichever comes second.
func (v *VM) restoreMachine(rc RestoreConfig, st *snapshot.VMState) error {
	v.snapshotBase = st.Memory.ID
	if st.IRQChip.PICMaster.ChipID != kvm.IRQChipPICMaster || st.IRQChip.PICSlave.ChipID != kvm.IRQChipPICSlave || st.IRQChip.IOAPIC.ChipID != kvm.IRQChipIOAPIC {
		return fmt.Errorf("restore %s: %w: interrupt controller IDs out of place", rc.StatePath, snapshot.ErrInvalid)
	}
	var errs firstError
	vcpusDone := make(chan struct{})
	go func() {
		defer close(vcpusDone)
		errs.set(v.restoreVCPUs(st, errs.failed))
	}()
	errs.set(v.restoreVMState(rc, st, errs.failed))
	// Both branches end before anything else happens, on failure too:
	// Close then finds every vCPU and device either branch made.
	<-vcpusDone
	if err := errs.get(); err != nil {
		return err
	}
	if err := v.waitPIT(); err != nil {
		return err
	}
	return v.vm.SetPIT(st.PIT)
}

// restoreVCPUs creates those of st's vCPUs that do not exist yet, starts
// the PIT's creation unless it has started, and writes
// each vCPU's state back. It stops between vCPUs once stop reports that
// the other branch failed. Its ioctls come from whichever thread the
// goroutine is on, as they came from the restoring goroutine before: KVM
// loads a vCPU for each ioctl and records the vCPU's thread only at its
// first KVM_RUN (from runVCPU's locked thread), so no thread has to be
// kept for it, nor counted by the confinement's all-thread rounds.
func (v *VM) restoreVCPUs(st *snapshot.VMState, stop func() bool) error {
	if err := v.createVCPUs(); err != nil {
		return err
	}
	if v.pitDone == nil { // not started with vCPU 0 (a restore from the CAS)
		v.startPIT()
	}
	for i, c := range v.vcpus {
		if stop() {
			return nil
		}
		if err := restoreVCPU(c, &st.VCPUs[i]); err != nil {
			return fmt.Errorf("restore vCPU %d: %w", i, err)
		}
		v.cpuid[i] = st.VCPUs[i].CPUID
	}
	return nil
}

// restoreVMState puts back the PICs, the IOAPIC, the clock and the
// devices: everything of the VM that is not a vCPU or the PIT. It stops
// before the devices once stop reports that the other branch failed.
func (v *VM) restoreVMState(rc RestoreConfig, st *snapshot.VMState, stop func() bool) error {
	for _, c := range []kvm.IRQChip{st.IRQChip.PICMaster, st.IRQChip.PICSlave, st.IRQChip.IOAPIC} {
		if err := v.vm.SetIRQChip(c); err != nil {
			return err
		}
	}
	if err := v.vm.SetClock(st.Clock); err != nil {
		return err
	}
	if stop() {
		return nil
	}
	id, err := genid.NewID()
	if err != nil {
		return err
	}
	if err := v.setupDevices(id); err != nil {
		return err
	}
	v.uart.Restore(st.Devices.UART)
	v.i8042.Restore(st.Devices.I8042)
	// Guest memory is in place, so the queues can be checked against it.
	v.restored = true
	if err := v.restoreVirtio(st.Devices.Virtio, rc.Overrides); err != nil {
		return fmt.Errorf("restore %s: %w", rc.StatePath, err)
	}
	// The boot-marker timeline is not put back: its offsets are from the
	// original VM's exec, and mixed into this process's timeline they
	// would show a restore "reaching" PID 1 before it created its VM. The
	// state file keeps it as a record of that boot.
	return nil
}

// firstError keeps the first error that parallel steps report; the later
// ones are of steps that ran on regardless and are dropped.
type firstError struct {
	mu  sync.Mutex
	err error
	bad atomic.Bool
}

func (f *firstError) set(err error) {
	if err == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
		f.bad.Store(true)
	}
}

// failed reports whether an error has been set, for a step deciding
// whether to go on.
func (f *firstError) failed() bool { return f.bad.Load() }

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// restoreFromCAS is Restore for a snapshot whose memory is in a CAS store:
// each chunk is mapped from the store once the state has named the
// manifest, and the VM holds a lease on it until it is closed.
func (v *VM) restoreFromCAS(ctx context.Context, rc RestoreConfig, waitState func() error, state func() (*snapshot.VMState, error)) (*VM, error) {
	if err := waitState(); err != nil {
		return nil, err
	}
	st, _ := state()
	if st.Memory.Manifest == "" {
		return nil, fmt.Errorf("restore %s: its memory is in a file, not in the CAS store %s", rc.StatePath, rc.CASStore)
	}
	if st.Memory.Diff {
		return nil, errors.New("a diff snapshot cannot be restored on its own: merge it onto its base first")
	}
	store, err := cas.OpenExisting(rc.CASStore)
	if err != nil {
		return nil, fmt.Errorf("CAS store %s: %w", rc.CASStore, err)
	}
	chunks, lease, err := snapshot.OpenCASMemory(ctx, store, st, runtime.GOMAXPROCS(0))
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", rc.StatePath, err)
	}
	v.casLease, v.casStore = lease, rc.CASStore
	if rc.TrackDirtyPages != nil {
		v.cfg.TrackDirtyPages = *rc.TrackDirtyPages
	} else {
		v.cfg.TrackDirtyPages = st.Machine.TrackDirtyPages
	}
	if err := v.setupMemory(memory.Config{Size: st.Memory.Size, Backing: memory.ChunkMapped, Chunks: chunks}); err != nil {
		return nil, fmt.Errorf("restore %s: %w", rc.StatePath, err)
	}
	v.timeline.MemoryReady = time.Now()
	v.askSupportedCPUID()
	v.startPrefetch(rc, st)
	if err := v.createIRQChip(); err != nil {
		return nil, err
	}
	return v, v.restoreState(ctx, rc, st)
}

// restoreVCPU writes one vCPU's saved state back, in the order KVM needs:
// CPUID before anything that depends on it (MSRs, XSAVE layout), segment
// registers before general ones, LAPIC before events.
func restoreVCPU(c *kvm.VCPU, s *snapshot.VCPUState) error {
	if err := c.SetCPUID(s.CPUID); err != nil {
		return err
	}
	if s.TSCKHz != 0 {
		if cur, err := c.TSCKHz(); err == nil && cur != s.TSCKHz {
			if err := c.SetTSCKHz(s.TSCKHz); err != nil {
				return fmt.Errorf("the snapshot's TSC runs at %d kHz, this host at %d kHz, and scaling it failed: %w", s.TSCKHz, cur, err)
			}
		}
	}
	if err := c.SetMPState(s.MPState); err != nil {
		return err
	}
	if err := c.SetSregs(s.Sregs); err != nil {
		return err
	}
	if err := c.SetRegs(s.Regs); err != nil {
		return err
	}
	if err := c.SetXSave(s.XSave); err != nil {
		return err
	}
	if err := c.SetXCRs(s.XCRs); err != nil {
		return err
	}
	if err := c.SetDebugRegs(s.DebugRegs); err != nil {
		return err
	}
	if err := c.SetLAPIC(s.LAPIC); err != nil {
		return err
	}
	if err := c.SetMSRs(s.MSRs); err != nil {
		return err
	}
	if err := c.SetEvents(s.Events); err != nil {
		return err
	}
	// Tell a kvmclock guest it was paused, so its watchdogs do not take the
	// time spent as a snapshot for a hang. Guests without kvmclock refuse
	// this, which is fine.
	_ = c.KVMClockCtrl()
	return nil
}

// GenerationID returns the VM's current generation ID.
func (v *VM) GenerationID() genid.ID { return v.genid.ID() }
