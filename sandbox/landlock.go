package sandbox

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// Paths are the only file-system objects a confined VMM may reach; every
// other path is refused by the kernel (EACCES), whatever its permissions.
// Descriptors opened before Landlock keep working: it checks opens.
type Paths struct {
	// ReadOnly files or directories are readable: the kernel, the
	// initrd, read-only drives, a snapshot to restore from.
	ReadOnly []string
	// ReadWrite files are readable, writable and truncatable, not
	// removable: writable drives.
	ReadWrite []string
	// Dirs are directories in which the VMM creates, writes, links,
	// renames and removes files and sockets, and connects to the sockets
	// there: the snapshot directory, the API socket's and vsock's
	// uds_path directory.
	Dirs []string
	// Devices are device nodes opened read-write with ioctls allowed:
	// /dev/kvm, /dev/net/tun (usually opened before Landlock anyway).
	Devices []string
}

// Validate refuses relative paths, which would resolve against a working
// directory that the caller may not expect.
func (p Paths) Validate() error {
	for _, list := range [][]string{p.ReadOnly, p.ReadWrite, p.Dirs, p.Devices} {
		for _, path := range list {
			if path == "" || !filepath.IsAbs(path) {
				return fmt.Errorf("landlock: path %q is not absolute", path)
			}
		}
	}
	return nil
}

// LandlockStatus says what Landlock did.
type LandlockStatus struct {
	// ABI is the kernel's Landlock ABI version, 0 without Landlock.
	ABI int
	// Enforced is true when the rules are in force on every thread.
	Enforced bool
	// Rounds counts the stop-the-world rounds (psx) it took: 0 from ABI
	// 8 on, 1 or 2 before.
	Rounds int
	// NoNewPrivs is true when no_new_privs is set on every thread; false
	// when Landlock enforced its rules through CAP_SYS_ADMIN and left it
	// to the caller.
	NoNewPrivs bool
}

// String is the log line for the status.
func (s LandlockStatus) String() string {
	if !s.Enforced {
		return "landlock: not available on this kernel (no Landlock LSM, or ABI 0); file access is NOT restricted beyond the chroot and permissions"
	}
	return fmt.Sprintf("landlock: enforced (kernel ABI %d, %d all-thread rounds)", s.ABI, s.Rounds)
}

// LandlockABI returns the kernel's Landlock ABI version, 0 without it.
func LandlockABI() int {
	v, err := ll.LandlockGetABIVersion()
	if err != nil {
		return 0
	}
	return v
}

// Landlock restricts the whole process (every thread, and anything it
// would exec) to p, with the strongest rules this kernel knows and the rest
// dropped (best effort): on a kernel without Landlock it does nothing and
// says so in the status, for the caller to log. Every path must exist. It
// is irreversible.
//
// Before Landlock ABI 8 a thread can only restrict itself, so the rules
// reach every thread through one stop-the-world round (psx), and the
// kernel takes them only from a thread that has no_new_privs or
// CAP_SYS_ADMIN. go-landlock's Restrict spends a second round setting
// no_new_privs on every thread first; Landlock skips that round when the
// calling thread already has no_new_privs (inherited from volt-jailer,
// whose threads all have it) or CAP_SYS_ADMIN in its effective set (root:
// every thread holds what this one holds, psx keeps them equal). Then it
// leaves no_new_privs as it found it (NoNewPrivs in the status says
// whether it is set): the caller sets it, for nothing, with the process
// filter (ApplyProcess: TSYNC copies it to every thread), or else with
// EnsureNoNewPrivs. Should a thread lack both after all, the kernel
// refuses it and the Go runtime, seeing threads disagree, kills the
// process: the check can fail closed, never open.
//
// From ABI 8 on, go-landlock restricts every thread in one system call
// (LANDLOCK_RESTRICT_SELF_TSYNC, no round) and sets no_new_privs with it.
// A cgo build also goes through go-landlock (its libpsx lists
// /proc/PID/task after each round, which go-landlock allows for it).
func Landlock(p Paths) (LandlockStatus, error) {
	if err := p.Validate(); err != nil {
		return LandlockStatus{}, err
	}
	var roFiles, roDirs []string
	for _, path := range p.ReadOnly {
		fi, err := os.Stat(path)
		if err != nil {
			return LandlockStatus{}, fmt.Errorf("landlock: %w", err)
		}
		if fi.IsDir() {
			roDirs = append(roDirs, path)
		} else {
			roFiles = append(roFiles, path)
		}
	}
	for _, c := range []struct {
		what  string
		paths []string
		dir   bool
	}{{"a writable drive", p.ReadWrite, false}, {"a directory", p.Dirs, true}, {"a device", p.Devices, false}} {
		for _, path := range c.paths {
			fi, err := os.Stat(path)
			if err != nil {
				return LandlockStatus{}, fmt.Errorf("landlock: %w", err)
			}
			if fi.IsDir() != c.dir {
				return LandlockStatus{}, fmt.Errorf("landlock: %s given as %s", path, c.what)
			}
		}
	}
	st := LandlockStatus{ABI: LandlockABI()}
	var rules []landlock.Rule
	// Read only: no execute, unlike go-landlock's RODirs.
	if len(roFiles) > 0 {
		rules = append(rules, landlock.PathAccess(landlock.AccessFSSet(ll.AccessFSReadFile), roFiles...))
	}
	if len(roDirs) > 0 {
		rules = append(rules, landlock.PathAccess(landlock.AccessFSSet(ll.AccessFSReadFile|ll.AccessFSReadDir), roDirs...))
	}
	if len(p.ReadWrite) > 0 {
		rules = append(rules, landlock.RWFiles(p.ReadWrite...))
	}
	if len(p.Dirs) > 0 {
		// Refer: files move between directories of a tree (a CAS
		// store's ingest directory to its chunks); without it the kernel
		// refuses such a rename with EXDEV.
		rules = append(rules, landlock.RWDirs(p.Dirs...).WithResolveUnix().WithRefer())
	}
	if len(p.Devices) > 0 {
		rules = append(rules, landlock.RWFiles(p.Devices...).WithIoctlDev())
	}
	// Network rules with no ports allowed: a VMM has no business binding
	// or connecting TCP (its sockets are Unix sockets). Scoping keeps it
	// from signalling processes or reaching abstract Unix sockets outside
	// its domain.
	cfg := landlock.V11.BestEffort()
	if st.ABI >= abiTSync || builtWithCgo {
		if err := cfg.Restrict(rules...); err != nil {
			return st, fmt.Errorf("landlock: %w", err)
		}
		st.Enforced = st.ABI > 0
		st.NoNewPrivs = st.Enforced
		return st, nil
	}
	fd, flags, err := cfg.NewRulesetFD(rules...)
	if err != nil {
		return st, fmt.Errorf("landlock: %w", err)
	}
	if fd < 0 {
		return st, nil // no Landlock here: nothing to enforce
	}
	defer unix.Close(fd)
	nnp := noNewPrivs()
	if !nnp && !effectiveSysAdmin() {
		if err := SetNoNewPrivs(); err != nil {
			return st, fmt.Errorf("landlock: %w", err)
		}
		st.Rounds++
		nnp = true
	}
	if err := ll.AllThreadsLandlockRestrictSelf(fd, flags); err != nil {
		return st, fmt.Errorf("landlock: landlock_restrict_self on every thread: %w", err)
	}
	st.Rounds++
	st.Enforced, st.NoNewPrivs = true, nnp
	return st, nil
}

// abiTSync is the Landlock ABI from which one landlock_restrict_self call
// restricts every thread (LANDLOCK_RESTRICT_SELF_TSYNC).
const abiTSync = 8

// noNewPrivs reports whether the calling thread has no_new_privs.
func noNewPrivs() bool {
	n, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	return err == nil && n == 1
}

// effectiveSysAdmin reports whether the calling thread has CAP_SYS_ADMIN in
// its effective set (in its own user namespace, the one Landlock checks).
func effectiveSysAdmin() bool {
	on, err := cap.GetProc().GetFlag(cap.Effective, cap.SYS_ADMIN)
	return err == nil && on
}
