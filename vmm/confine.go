package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/voltvmm/volt/sandbox"
	"github.com/voltvmm/volt/vmm/snapshot"
)

// Confinement is what a VM's process locks itself into when Run starts:
// once the VM is built or restored, before the guest's first instruction
// (docs/security.md). Every step is irreversible and process-wide, so only
// a process that runs this one VM (volt-vmm) asks for it.
type Confinement struct {
	// Seccomp chooses the filters per thread role; LevelOff installs none.
	Seccomp sandbox.Options
	// Landlock limits the file system to what the running VM still opens:
	// the CAS store of its disks or memory, /proc/self/pagemap (snapshots
	// read it), the directories of its sockets, and SnapshotDirs.
	Landlock bool
	// SnapshotDirs are the directories in which snapshots may be created
	// once the VM runs. With Landlock, a snapshot elsewhere is refused.
	SnapshotDirs []string
	// SocketDirs hold Unix sockets the process owns and removes when it
	// exits (the API socket's directory).
	SocketDirs []string
	// KeepCapabilities leaves the process its capabilities (debugging);
	// otherwise every set is emptied and no_new_privs set.
	KeepCapabilities bool
	// AfterConfine, if set, runs once everything is in force and before the
	// guest runs: the test hooks of volt-vmm (a forbidden call, an open).
	AfterConfine func(*slog.Logger)
	// ConfineOthers, if set, confines threads the VM does not own once the
	// process filter is in place (volt-vmm: the API server's, with the api
	// filter); not called when Seccomp is LevelOff. Its error fails the
	// confinement as any other step's does.
	ConfineOthers func() error
}

// Validate refuses relative directories, which Landlock would resolve
// against a working directory the caller may not expect.
func (c *Confinement) Validate() error {
	var errs []error
	for _, d := range slices.Concat(c.SnapshotDirs, c.SocketDirs) {
		if !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("confinement: directory %q is not absolute", d))
		}
	}
	return errors.Join(errs...)
}

// pagemap is read by snapshots to skip pages the guest never touched.
const pagemap = "/proc/self/pagemap"

// landlockPaths are the file-system objects the running VM may reach. The
// kernel, initrd, disks, TAPs and /dev/kvm are all open by now, and
// Landlock checks opens, not descriptors, so none of them is listed.
func (v *VM) landlockPaths(c *Confinement) sandbox.Paths {
	p := sandbox.Paths{ReadOnly: []string{pagemap}}
	dirs := slices.Concat(c.SnapshotDirs, c.SocketDirs)
	stores := map[string]bool{}
	for _, d := range v.cfg.Drives {
		if d.CASStore != "" {
			stores[d.CASStore] = true // a volume's chunks are opened as the guest reads them
		}
		if d.Volume != "" {
			dirs = append(dirs, d.Volume) // its map is rewritten on every flush
		}
	}
	if v.casStore != "" {
		stores[v.casStore] = true // the memory's lease is removed when the VM closes
	}
	for s := range stores {
		dirs = append(dirs, s)
	}
	for _, s := range v.virtio {
		if s.udsPath != "" {
			// Guest-initiated connections go to sockets beside the
			// listener, which is removed when the device closes.
			dirs = append(dirs, filepath.Dir(s.udsPath))
		}
	}
	slices.Sort(dirs)
	p.Dirs = slices.Compact(dirs)
	return p
}

// confine applies c to the whole process: Landlock, then capabilities,
// then the process-wide seccomp filter (Landlock and capset need calls no
// filter allows), whose TSYNC sets no_new_privs on every thread (a root
// VMM's Landlock and capset rounds need none). Threads locked afterwards
// add their role's filter.
func (v *VM) confine(c *Confinement) error {
	log := v.logger()
	start := time.Now()
	// Landlock (before ABI 8) and capabilities are changed thread by
	// thread, in one stop-the-world round per system call: their cost
	// grows with the threads the process has by now, which the log line
	// says (counting them is not free, so only when it is written).
	var tasks []os.DirEntry
	if log.Enabled(context.Background(), slog.LevelInfo) {
		tasks, _ = os.ReadDir("/proc/self/task")
	}
	var took struct{ landlock, caps, seccomp time.Duration }
	if c.Landlock {
		paths := v.landlockPaths(c)
		st, err := sandbox.Landlock(paths)
		if err != nil {
			return fmt.Errorf("landlock: %w", err)
		}
		if st.Enforced {
			v.landlockDirs = paths.Dirs
			log.Info(st.String(), "dirs", strings.Join(paths.Dirs, ","))
		} else {
			log.Warn(st.String())
		}
		took.landlock = time.Since(start)
	}
	if !c.KeepCapabilities {
		t := time.Now()
		if err := sandbox.ClearCapabilities(); err != nil {
			return fmt.Errorf("drop capabilities: %w", err)
		}
		took.caps = time.Since(t)
	}
	if c.Seccomp.Level != sandbox.LevelOff {
		t := time.Now()
		// The install sets no_new_privs on its thread, and TSYNC copies
		// it to every thread from there: both on one thread. (Locked for
		// the whole confinement, the rounds took twice as long.)
		runtime.LockOSThread()
		err := sandbox.ApplyProcess(sandbox.RoleVMM, c.Seccomp)
		runtime.UnlockOSThread()
		if err != nil {
			return fmt.Errorf("seccomp: %w", err)
		}
		if c.ConfineOthers != nil {
			if err := c.ConfineOthers(); err != nil {
				return fmt.Errorf("seccomp: %w", err)
			}
		}
		took.seccomp = time.Since(t)
	}
	if c.Landlock || !c.KeepCapabilities {
		if err := sandbox.EnsureNoNewPrivs(); err != nil { // no round after the filter
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	v.confined.Store(true)
	log.Info("confined", "threads", len(tasks), "landlock", took.landlock, "capabilities", took.caps, "seccomp", took.seccomp, "total", time.Since(start))
	if c.AfterConfine != nil {
		c.AfterConfine(log)
	}
	return nil
}

// confineThread adds role's filter to the calling goroutine's thread when
// the process is filtered; it locks the goroutine to its thread for good.
func confineThread(role sandbox.Role) error {
	if !sandbox.ProcessFilterApplied() {
		return nil
	}
	if err := sandbox.ApplyThread(role); err != nil {
		return fmt.Errorf("seccomp filter of the %s thread: %w", role, err)
	}
	return nil
}

// workerRoles map a virtio device kind to its worker thread's filter.
var workerRoles = map[string]sandbox.Role{
	snapshot.VirtioBlock:   sandbox.RoleBlock,
	snapshot.VirtioNet:     sandbox.RoleNet,
	snapshot.VirtioVsock:   sandbox.RoleVsock,
	snapshot.VirtioEntropy: sandbox.RoleRNG,
}

// ErrOutsideSnapshotDirs is wrapped by the error for a snapshot target that
// a Landlock-confined VMM cannot write.
var ErrOutsideSnapshotDirs = errors.New("outside the snapshot directories this VMM may write")

// checkSnapshotTarget refuses, before any work, a snapshot target (a file,
// or a CAS store's directory) in a directory that Landlock would refuse
// halfway through the snapshot.
func (v *VM) checkSnapshotTarget(what, path string, isDir bool) error {
	if !v.confined.Load() || v.landlockDirs == nil {
		return nil
	}
	dir := filepath.Clean(path)
	if !isDir {
		dir = filepath.Dir(dir)
	}
	for _, d := range v.landlockDirs {
		if rel, err := filepath.Rel(d, dir); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return nil
		}
	}
	return fmt.Errorf("%s %s: %w (add it with volt-vmm --snapshot-dir; allowed now: %s)", what, path, ErrOutsideSnapshotDirs, strings.Join(v.landlockDirs, ", "))
}
