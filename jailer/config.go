// Package jailer starts volt-vmm confined, in the order of Firecracker's
// jailer (docs/jailer.md there): inherited descriptors closed at exec, an
// empty environment, resource limits, a cgroup with CPU, memory and pids
// limits, a new mount namespace pivoted into a per-VM chroot holding only
// the kernel, disks, sockets and device nodes the VM needs, a new PID
// namespace and optionally an existing network namespace, /dev/kvm and
// /dev/net/tun made in the chroot, the VM's unprivileged uid and gid with
// no capability left, then exec of volt-vmm. See docs/security.md.
//
// The jailer runs in two processes. The supervisor (Run) validates
// everything, creates the cgroup, starts the second process in new PID and
// mount namespaces, puts it into the cgroup before it does anything, waits
// for it, forwards SIGINT/SIGTERM/SIGHUP, reports a seccomp kill by the
// system call's name, removes the cgroup and exits with the VMM's status.
// The second process (Child, PID 1 of the new namespace) builds the chroot,
// drops privileges and execs volt-vmm, which keeps its PID 1.
package jailer

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/internal/jailpath"
)

// DefaultChrootBase is Firecracker's default --chroot-base-dir.
const DefaultChrootBase = "/srv/jailer"

// DefaultNoFile is the descriptor limit without --resource-limit no-file
// (Firecracker's default).
const DefaultNoFile = 2048

// Config is one jailed VMM.
type Config struct {
	// ID names the VM: 1 to 64 letters, digits and '-'. It names the
	// chroot and the cgroup, and is passed to volt-vmm as --id.
	ID string
	// ExecFile is volt-vmm on the host: an executable regular file.
	ExecFile string
	// UID and GID are what volt-vmm runs as; never 0.
	UID, GID int
	// ChrootBase holds the chroots: <ChrootBase>/<exec name>/<ID>/root.
	ChrootBase string
	// NetNS is a network namespace to join (/var/run/netns/NAME), or "".
	NetNS string
	// CgroupVersion is 1 or 2, or 0 to use v2 when its hierarchy has the
	// controllers the settings need and v1 otherwise.
	CgroupVersion int
	// Cgroups are the cgroup files to write, e.g. memory.max=256M.
	Cgroups []CgroupSetting
	// ParentCgroup is the cgroup, relative to each hierarchy's root, under
	// which <ID> is created; default the exec file's name.
	ParentCgroup string
	// Limits are setrlimit values (no-file defaults to 2048).
	Limits []Rlimit
	// Binds are host files and directories made visible in the chroot.
	Binds []Bind
	// CopyExecFile copies volt-vmm into the chroot (Firecracker's way:
	// no page shared with another VMM's process) instead of bind-mounting
	// it read-only (no copy, faster to start).
	CopyExecFile bool
	// Args are volt-vmm's arguments, after the jailer's own --id and
	// --start-time-us. Paths in them are paths inside the chroot.
	Args []string
}

// CgroupSetting is one cgroup file and the value written to it.
type CgroupSetting struct {
	File, Value string
}

// Rlimit is one resource limit, Firecracker's names: fsize, no-file.
type Rlimit struct {
	Resource string
	Value    uint64
}

// Bind makes Host visible at Jail (an absolute path inside the chroot),
// read-only unless Writable.
type Bind struct {
	Host, Jail string
	Writable   bool
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// ExecName is the exec file's base name: volt-vmm's path in the chroot and
// the default parent cgroup.
func (c *Config) ExecName() string { return filepath.Base(c.ExecFile) }

// JailDir is <ChrootBase>/<exec name>/<ID>, which holds root/ and the pid
// file.
func (c *Config) JailDir() string { return jailpath.Dir(c.ChrootBase, c.ExecFile, c.ID) }

// RootDir is the chroot.
func (c *Config) RootDir() string { return jailpath.Root(c.JailDir()) }

// Validate checks everything that can be checked before any change is
// made, so that bad input is refused with nothing created.
func (c *Config) Validate() error {
	if !idRE.MatchString(c.ID) {
		return fmt.Errorf("--id %q: 1 to 64 letters, digits and '-'", c.ID)
	}
	if err := checkExecFile(c.ExecFile); err != nil {
		return err
	}
	if c.UID <= 0 || c.GID <= 0 {
		return fmt.Errorf("--uid %d --gid %d: the VMM must run as an unprivileged uid and gid, never 0", c.UID, c.GID)
	}
	if c.UID > 1<<32-2 || c.GID > 1<<32-2 {
		return fmt.Errorf("--uid %d --gid %d: out of range", c.UID, c.GID)
	}
	if !filepath.IsAbs(c.ChrootBase) || filepath.Clean(c.ChrootBase) == "/" {
		return fmt.Errorf("--chroot-base-dir %q: must be an absolute directory other than /", c.ChrootBase)
	}
	if fi, err := os.Lstat(c.ChrootBase); err == nil && !fi.IsDir() {
		return fmt.Errorf("--chroot-base-dir %s: not a directory (symlinks are refused)", c.ChrootBase)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--chroot-base-dir: %w", err)
	}
	if c.NetNS != "" {
		var st unix.Statfs_t
		if err := unix.Statfs(c.NetNS, &st); err != nil {
			return fmt.Errorf("--netns %s: %w", c.NetNS, err)
		}
		if st.Type != unix.NSFS_MAGIC {
			return fmt.Errorf("--netns %s: not a namespace file (ip netns add makes one under /var/run/netns)", c.NetNS)
		}
	}
	if c.CgroupVersion != 0 && c.CgroupVersion != 1 && c.CgroupVersion != 2 {
		return fmt.Errorf("--cgroup-version %d: 1 or 2", c.CgroupVersion)
	}
	if c.ParentCgroup != "" {
		if filepath.IsAbs(c.ParentCgroup) || !filepath.IsLocal(c.ParentCgroup) {
			return fmt.Errorf("--parent-cgroup %q: a relative path inside the cgroup hierarchy", c.ParentCgroup)
		}
	}
	for _, s := range c.Cgroups {
		if err := checkCgroupSetting(s, c.CgroupVersion); err != nil {
			return err
		}
	}
	for _, l := range c.Limits {
		if _, ok := rlimits[l.Resource]; !ok {
			return fmt.Errorf("--resource-limit %s: unknown resource (have fsize, no-file)", l.Resource)
		}
	}
	seen := map[string]bool{"/" + c.ExecName(): true, "/dev": true, "/proc": true}
	for _, b := range c.Binds {
		if err := checkBind(b); err != nil {
			return err
		}
		j := filepath.Clean(b.Jail)
		for p := j; p != "/"; p = filepath.Dir(p) {
			if p == "/dev" || p == "/proc" {
				return fmt.Errorf("bind %s: %s is the jailer's own", b.Jail, p)
			}
		}
		if seen[j] {
			return fmt.Errorf("bind %s: the path is used twice (or is the VMM's own /%s)", b.Jail, c.ExecName())
		}
		seen[j] = true
	}
	for _, a := range c.Args {
		if a == "--id" || strings.HasPrefix(a, "--id=") || a == "--start-time-us" || strings.HasPrefix(a, "--start-time-us=") {
			return fmt.Errorf("volt-vmm argument %s: the jailer passes --id and --start-time-us itself", a)
		}
	}
	return nil
}

// checkExecFile refuses anything but an executable regular file, without
// blocking on a FIFO (Stat, not open).
func checkExecFile(path string) error {
	if path == "" {
		return errors.New("--exec-file is required")
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("--exec-file %s: must be an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("--exec-file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("--exec-file %s: not a regular file (%s)", path, kind(fi.Mode()))
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("--exec-file %s: not executable", path)
	}
	return nil
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	case m&os.ModeSymlink != 0:
		return "a symlink"
	}
	return m.Type().String()
}

// checkBind accepts regular files, block devices (drives) and directories
// on the host, at a clean absolute path inside the chroot.
func checkBind(b Bind) error {
	if !filepath.IsAbs(b.Host) {
		return fmt.Errorf("bind %s: the host path must be absolute", b.Host)
	}
	fi, err := os.Stat(b.Host)
	if err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	m := fi.Mode()
	if !m.IsRegular() && !m.IsDir() && !(m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0) {
		return fmt.Errorf("bind %s: %s; only files, block devices and directories go into the chroot", b.Host, kind(m))
	}
	if !filepath.IsAbs(b.Jail) || filepath.Clean(b.Jail) != b.Jail || b.Jail == "/" {
		return fmt.Errorf("bind %s: jail path %q must be a clean absolute path other than /", b.Host, b.Jail)
	}
	return nil
}

// ParseBind reads HOST[:JAIL]; JAIL defaults to /<base name of HOST>.
func ParseBind(s string, writable bool) (Bind, error) {
	host, jail, ok := strings.Cut(s, ":")
	if host == "" {
		return Bind{}, fmt.Errorf("bind %q: HOST[:JAIL]", s)
	}
	if !ok {
		jail = "/" + filepath.Base(host)
	}
	return Bind{Host: host, Jail: jail, Writable: writable}, nil
}

// rlimits maps Firecracker's resource names to setrlimit's.
var rlimits = map[string]int{"fsize": unix.RLIMIT_FSIZE, "no-file": unix.RLIMIT_NOFILE}

// ParseRlimit reads RESOURCE=VALUE.
func ParseRlimit(s string) (Rlimit, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return Rlimit{}, fmt.Errorf("--resource-limit %q: RESOURCE=VALUE", s)
	}
	if _, known := rlimits[k]; !known {
		return Rlimit{}, fmt.Errorf("--resource-limit %s: unknown resource (have fsize, no-file)", k)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return Rlimit{}, fmt.Errorf("--resource-limit %s=%s: not a non-negative integer", k, v)
	}
	return Rlimit{Resource: k, Value: n}, nil
}

// ParseCgroup reads FILE=VALUE.
func ParseCgroup(s string) (CgroupSetting, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return CgroupSetting{}, fmt.Errorf("--cgroup %q: FILE=VALUE (e.g. memory.max=256M)", s)
	}
	return CgroupSetting{File: k, Value: v}, nil
}

// ParseID reads a uid or gid: a number, or a name looked up in the
// password or group database.
func ParseID(s string, group bool) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%d: not an id", n)
		}
		return n, nil
	}
	if group {
		g, err := user.LookupGroup(s)
		if err != nil {
			return 0, fmt.Errorf("unknown group %q", s)
		}
		return strconv.Atoi(g.Gid)
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, fmt.Errorf("unknown user %q", s)
	}
	return strconv.Atoi(u.Uid)
}
