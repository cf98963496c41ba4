// Package trace times the boot stages of VMM processes from the kernel's side.
//
// An eBPF program (stages.c) attached only to tracepoints records, for each
// watched process and all of its threads, the kernel time of the exec, of the
// KVM ioctls that build the VM, of the first KVM_RUN, of the first byte
// written to COM1 and of every guest boot marker (port 0x80), and of the
// process's exit, and counts KVM exits between these points. Nothing in it
// knows which VMM runs, so volt-vmm and QEMU are measured the same way.
//
// The caller must register a process with Watch before that process execs
// the VMM (see bench's launcher), because the exec is the origin of every
// stage.
package trace

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/marker"
)

// ErrUnsupported wraps every failure that means "this machine or user cannot
// run the tracer" (no root, no BTF, no tracefs), so that callers and tests
// can tell it from a bug.
var ErrUnsupported = errors.New("eBPF tracing unavailable")

// Milestone is one point of a boot that the tracer timestamps.
type Milestone uint32

// Milestones mirror enum milestone in stages.c.
const (
	Exec        = Milestone(stagesMilestoneMS_EXEC)
	VMCreated   = Milestone(stagesMilestoneMS_VM_CREATED)   // KVM_CREATE_VM returned
	Memory      = Milestone(stagesMilestoneMS_MEMORY)       // first KVM_SET_USER_MEMORY_REGION returned
	VCPU        = Milestone(stagesMilestoneMS_VCPU)         // first KVM_CREATE_VCPU returned
	GuestEntry  = Milestone(stagesMilestoneMS_GUEST_ENTRY)  // first KVM_RUN entered
	FirstOutput = Milestone(stagesMilestoneMS_FIRST_OUTPUT) // first byte to COM1's THR
	// Answer is the first byte to COM1's THR after the guest's ready
	// marker, or the first byte at all in a process whose guest wrote no
	// marker (a restored VM): the answer to the first command.
	Answer = Milestone(stagesMilestoneMS_ANSWER)
	Exit   = Milestone(stagesMilestoneMS_EXIT) // the main thread exited
	// LastExec is the latest exec after the first, in a process that
	// exec'd more than once: the jail process of volt-jailer re-executes
	// the jailer, then execs volt-vmm in the chroot.
	LastExec      = Milestone(stagesMilestoneMS_LAST_EXEC)
	numMilestones = Milestone(stagesMilestoneMS_COUNT)
	markerBase    = Milestone(stagesMilestoneMS_MARKER)
)

// Marker returns the milestone of a guest boot marker. Only codes 0x40–0x7f
// are traced.
func Marker(s marker.Stage) (Milestone, bool) {
	if s < 0x40 || s > 0x7f {
		return 0, false
	}
	return markerBase + Milestone(s-0x40), true
}

// MarkerStage reports which boot marker m stands for, if any.
func (m Milestone) MarkerStage() (marker.Stage, bool) {
	if m < markerBase || m >= markerBase+0x40 {
		return 0, false
	}
	return marker.Stage(m-markerBase) + 0x40, true
}

func (m Milestone) String() string {
	switch m {
	case Exec:
		return "exec"
	case VMCreated:
		return "vm-created"
	case Memory:
		return "memory"
	case VCPU:
		return "vcpu"
	case GuestEntry:
		return "guest-entry"
	case FirstOutput:
		return "first-output"
	case Answer:
		return "answer"
	case Exit:
		return "exit"
	case LastExec:
		return "last-exec"
	}
	if s, ok := m.MarkerStage(); ok {
		return s.String()
	}
	return fmt.Sprintf("milestone-%d", uint32(m))
}

// Point is one milestone of a boot as the kernel saw it.
type Point struct {
	Milestone Milestone
	At        time.Duration // since the exec of the VMM
	// Exits since the previous point: kvm:kvm_exit (all exits, handled
	// in the kernel or not) and kvm:kvm_userspace_exit (KVM_RUN returns).
	KVMExits, UserExits uint32
}

// Record is everything the tracer saw of one process.
type Record struct {
	Points         []Point // in time order; Exec first, at 0
	MarkerWrites   uint32  // every write to port 0x80, repeats included
	MemoryRegions  uint32
	VCPUs          uint32
	LastThreadExit time.Duration // since exec; the whole thread group is gone
	// Origin is the kernel time (CLOCK_MONOTONIC) of the exec, the zero of
	// Points: records of two processes are put on one clock with it.
	Origin time.Duration
	// Child is the TGID of the first child process to exec, enrolled at
	// its fork, of a process started with Gated.Follow; 0 for none.
	Child int
}

// At returns the time of milestone m since exec.
func (r Record) At(m Milestone) (time.Duration, bool) {
	for _, p := range r.Points {
		if p.Milestone == m {
			return p.At, true
		}
	}
	return 0, false
}

// Tracer owns the loaded eBPF objects and their tracepoint links.
type Tracer struct {
	objs  stagesObjects
	links []link.Link
	// kvmExitErr is why kvm:kvm_exit could not be attached, if it could
	// not: the tracer works without it, but its exit counts are unknown.
	kvmExitErr error
}

// KVMExitsTraced reports whether kvm:kvm_exit is attached, so that a
// record's KVM exit counts mean something; when it is not, the error says
// why.
func (t *Tracer) KVMExitsTraced() (bool, error) { return t.kvmExitErr == nil, t.kvmExitErr }

// tracefsDir is where the kernel's tracing file system normally lives; the
// tracepoint links read event IDs from it.
const tracefsDir = "/sys/kernel/tracing"

// New loads the eBPF program and attaches it. It needs root (CAP_BPF and
// CAP_PERFMON) and mounts tracefs when nothing is mounted there.
func New() (*Tracer, error) {
	if err := mountTracefs(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("trace: remove memlock limit: %w: %w", ErrUnsupported, err)
	}
	t := &Tracer{}
	if err := loadStagesObjects(&t.objs, nil); err != nil {
		return nil, fmt.Errorf("trace: load eBPF objects (run as root on a kernel with BTF): %w: %w", ErrUnsupported, err)
	}
	attach := []struct {
		group, name string
		prog        *ebpf.Program
	}{
		{"sched", "sched_process_exec", t.objs.OnExec},
		{"sched", "sched_process_exit", t.objs.OnExit},
		{"syscalls", "sys_enter_ioctl", t.objs.OnIoctlEnter},
		{"syscalls", "sys_exit_ioctl", t.objs.OnIoctlExit},
		{"kvm", "kvm_pio", t.objs.OnPio},
		{"kvm", "kvm_userspace_exit", t.objs.OnUserspaceExit},
	}
	for _, a := range attach {
		l, err := link.Tracepoint(a.group, a.name, a.prog, nil)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("trace: attach %s:%s (is the kvm module loaded?): %w: %w", a.group, a.name, ErrUnsupported, err)
		}
		t.links = append(t.links, l)
	}
	// The launcher's children join the filter at their fork (Start).
	fork, err := link.AttachTracing(link.TracingOptions{Program: t.objs.OnFork, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("trace: attach tp_btf/sched_process_fork (needs BTF, /sys/kernel/btf/vmlinux): %w: %w", ErrUnsupported, err)
	}
	t.links = append(t.links, fork)
	// Only the exit counts need kvm:kvm_exit; without it every stage is
	// still timed, and the counts are reported as not measured.
	if l, err := link.Tracepoint("kvm", "kvm_exit", t.objs.OnKvmExit, nil); err != nil {
		t.kvmExitErr = fmt.Errorf("trace: attach kvm:kvm_exit: %w", err)
	} else {
		t.links = append(t.links, l)
	}
	return t, nil
}

// mountTracefs makes the tracepoint event IDs readable. An existing mount
// (tracefs itself, or the debugfs automount) is left alone.
func mountTracefs() error {
	if _, err := os.Stat(tracefsDir + "/events"); err == nil {
		return nil
	}
	if _, err := os.Stat("/sys/kernel/debug/tracing/events"); err == nil {
		return nil
	}
	if err := unix.Mount("nodev", tracefsDir, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("trace: mount tracefs on %s (needs root): %w: %w", tracefsDir, ErrUnsupported, err)
	}
	return nil
}

// Close detaches and unloads everything.
func (t *Tracer) Close() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	errs = append(errs, t.objs.Close())
	return errors.Join(errs...)
}

// Watch starts tracing the process with this TGID. Call it before the
// process execs the VMM; an earlier record for the same TGID is discarded.
// Start does this by itself for the processes it starts; Watch is for a
// process made some other way that waits before its exec.
func (t *Tracer) Watch(tgid int) error {
	var zero stagesProc
	if err := t.objs.Procs.Update(uint32(tgid), &zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("trace: watch %d: %w", tgid, err)
	}
	return nil
}

// ErrNoExec means the watched process never execed while watched.
var ErrNoExec = errors.New("no exec seen")

// Collect returns what was recorded for tgid and stops watching it. Call it
// after the process has been reaped: its exit is recorded before the parent
// can see it.
func (t *Tracer) Collect(tgid int) (Record, error) {
	var raw stagesProc
	key := uint32(tgid)
	if err := t.objs.Procs.Lookup(key, &raw); errors.Is(err, ebpf.ErrKeyNotExist) {
		// The kernel side forgets a process that ended before its exec.
		return Record{}, fmt.Errorf("trace: %d: %w (it ended before exec, or was never watched)", tgid, ErrNoExec)
	} else if err != nil {
		return Record{}, fmt.Errorf("trace: read %d: %w", tgid, err)
	}
	if err := t.objs.Procs.Delete(key); err != nil {
		return Record{}, fmt.Errorf("trace: forget %d: %w", tgid, err)
	}
	return decode(&raw)
}

// Child returns the TGID of the first child of tgid (started with
// Gated.Follow) to exec; 0 while none has. It reads without forgetting, so it may be called while
// both run.
func (t *Tracer) Child(tgid int) (int, error) {
	var raw stagesProc
	if err := t.objs.Procs.Lookup(uint32(tgid), &raw); err != nil {
		return 0, fmt.Errorf("trace: read %d: %w", tgid, err)
	}
	return int(raw.Child), nil
}

// Forget stops watching tgid without reading it, e.g. after a failed start.
func (t *Tracer) Forget(tgid int) {
	_ = t.objs.Procs.Delete(uint32(tgid))
}

// decode turns the kernel's per-milestone arrays into a timeline. Exits are
// counted in the slot of the milestone that was latest when they happened,
// so the exits leading up to a point are those of the point before it.
func decode(raw *stagesProc) (Record, error) {
	exec := raw.Ts[Exec]
	if exec == 0 {
		return Record{}, fmt.Errorf("trace: %w", ErrNoExec)
	}
	var pts []Point
	for m := Milestone(1); m < numMilestones; m++ {
		ts := raw.Ts[m]
		if ts == 0 {
			continue
		}
		at := time.Duration(0)
		if ts > exec {
			at = time.Duration(ts - exec)
		}
		pts = append(pts, Point{Milestone: m, At: at})
	}
	sort.SliceStable(pts, func(i, j int) bool {
		if pts[i].At != pts[j].At {
			return pts[i].At < pts[j].At
		}
		return pts[i].Milestone < pts[j].Milestone
	})
	for i := 1; i < len(pts); i++ {
		prev := pts[i-1].Milestone
		pts[i].KVMExits = raw.KvmExits[prev]
		pts[i].UserExits = raw.UserExits[prev]
	}
	r := Record{
		Points:        pts,
		MarkerWrites:  raw.MarkerWrites,
		MemoryRegions: raw.MemoryRegions,
		VCPUs:         raw.Vcpus,
		Origin:        time.Duration(exec),
		Child:         int(raw.Child),
	}
	if raw.LastThreadExit > exec {
		r.LastThreadExit = time.Duration(raw.LastThreadExit - exec)
	}
	return r, nil
}
