package jailer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/sandbox"
)

// Child is the jail's first process, PID 1 of its PID namespace, in its own
// mount namespace and already in its cgroups: it builds the chroot, joins
// the network namespace, drops to the VM's uid and gid with no capability
// left, and execs volt-vmm (which stays PID 1). It returns only on failure,
// having reported the failure to the supervisor.
func Child() int {
	// setns and exec act on the calling thread: keep them on one.
	runtime.LockOSThread()
	errPipe := os.NewFile(childErrorFD, "jailer-errors")
	unix.CloseOnExec(childErrorFD)
	fail := func(err error) int {
		fmt.Fprint(errPipe, err.Error())
		return 1
	}
	var cc childConfig
	cfg := os.NewFile(childConfigFD, "jailer-config")
	if err := json.NewDecoder(io.LimitReader(cfg, 1<<20)).Decode(&cc); err != nil {
		return fail(fmt.Errorf("read the configuration: %w", err))
	}
	cfg.Close()
	if err := build(&cc.Config); err != nil {
		return fail(err)
	}
	if err := dropPrivileges(cc.UID, cc.GID); err != nil {
		return fail(err)
	}
	argv := append([]string{cc.ExecName(), "--id", cc.ID, "--start-time-us", strconv.FormatInt(cc.StartTimeUs, 10)}, cc.Args...)
	err := unix.Exec("/"+cc.ExecName(), argv, []string{})
	return fail(fmt.Errorf("exec /%s in the chroot: %w", cc.ExecName(), err))
}

// build makes the chroot and pivots into it.
func build(c *Config) error {
	root := c.RootDir()
	// Nothing mounted here may reach the host's mount table.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// pivot_root needs the new root to be a mount point.
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the chroot %s onto itself: %w", root, err)
	}
	exe := filepath.Join(root, c.ExecName())
	if c.CopyExecFile {
		if err := copyFile(c.ExecFile, exe); err != nil {
			return err
		}
	} else if err := bindInto(root, Bind{Host: c.ExecFile, Jail: "/" + c.ExecName()}, false); err != nil {
		return err
	}
	for _, b := range c.Binds {
		if err := bindInto(root, b, true); err != nil {
			return err
		}
	}
	// A /proc of the new PID namespace (the VMM alone is in it): the VMM
	// links O_TMPFILE snapshots through /proc/self/fd, reads
	// /proc/self/pagemap and /proc/meminfo.
	if err := makeDir(root, "/proc"); err != nil {
		return err
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount /proc in the chroot: %w", err)
	}
	if err := makeDevices(root, c.UID, c.GID); err != nil {
		return err
	}
	// The VMM creates its sockets (and snapshots, where the operator
	// puts none elsewhere) in its root.
	if err := os.Lchown(root, c.UID, c.GID); err != nil {
		return fmt.Errorf("chown the chroot: %w", err)
	}
	if c.NetNS != "" {
		fd, err := unix.Open(c.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("--netns: %w", err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("join the network namespace %s: %w", c.NetNS, err)
		}
	}
	return pivot(root)
}

// pivot makes root the process's / and detaches the old root.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	const old = "old_root"
	if err := unix.Mkdir(old, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.PivotRoot(".", old); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Unmount(old, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	if err := unix.Rmdir(old); err != nil {
		return fmt.Errorf("remove the old root's mount point: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// bindInto bind-mounts b into root, read-only unless b.Writable, always
// nosuid and nodev; noexec too except for the VMM itself.
func bindInto(root string, b Bind, noexec bool) error {
	fi, err := os.Stat(b.Host)
	if err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	target := filepath.Join(root, b.Jail)
	if err := makeDir(root, filepath.Dir(b.Jail)); err != nil {
		return err
	}
	if fi.IsDir() {
		err = makeDir(root, b.Jail)
	} else {
		err = makeFile(target)
	}
	if err != nil {
		return err
	}
	if err := unix.Mount(b.Host, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s to %s in the chroot: %w", b.Host, b.Jail, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID | unix.MS_NODEV)
	if !b.Writable {
		flags |= unix.MS_RDONLY
	}
	if noexec {
		flags |= unix.MS_NOEXEC
	}
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s in the chroot read-only/nosuid/nodev: %w", b.Jail, err)
	}
	return nil
}

// makeDir creates dir (a path inside root) and its parents, refusing any
// existing component that is not a directory: the chroot is writable by
// the VM's uid, and a symlink a previous VMM left there must not send a
// mount outside it.
func makeDir(root, dir string) error {
	p := root
	for _, part := range strings.Split(strings.TrimPrefix(filepath.Clean(dir), "/"), "/") {
		if part == "" {
			continue
		}
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("chroot: %w", err)
			}
		case err != nil:
			return fmt.Errorf("chroot: %w", err)
		case !fi.IsDir():
			return fmt.Errorf("chroot: %s is %s, not a directory", p, kind(fi.Mode()))
		}
	}
	return nil
}

// makeFile creates an empty regular file as a mount point, or keeps one.
func makeFile(path string) error {
	fi, err := os.Lstat(path)
	if err == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("chroot: %s is %s, not a file", path, kind(fi.Mode()))
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return f.Close()
}

// makeDevices creates /dev/kvm and /dev/net/tun in the chroot with the
// host's device numbers, owned by the VM's uid, mode 0600.
func makeDevices(root string, uid, gid int) error {
	for _, d := range []struct {
		path     string
		required bool
	}{{"/dev/kvm", true}, {"/dev/net/tun", false}} {
		var st unix.Stat_t
		if err := unix.Stat(d.path, &st); err != nil {
			if !d.required && errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("%s on the host: %w", d.path, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR {
			return fmt.Errorf("%s on the host is not a character device", d.path)
		}
		if err := makeDir(root, filepath.Dir(d.path)); err != nil {
			return err
		}
		node := filepath.Join(root, d.path)
		if fi, err := os.Lstat(node); err == nil {
			if fi.Mode()&os.ModeCharDevice == 0 {
				return fmt.Errorf("chroot: %s is %s, not a device", node, kind(fi.Mode()))
			}
			if err := os.Remove(node); err != nil {
				return fmt.Errorf("chroot: %w", err)
			}
		}
		if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod %s in the chroot: %w", d.path, err)
		}
		if err := unix.Chmod(node, 0o600); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
		if err := os.Lchown(node, uid, gid); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy the exec file: %w", err)
	}
	defer in.Close()
	os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("copy the exec file: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy the exec file: %w", err)
	}
	return out.Close()
}

// dropPrivileges leaves the process as uid:gid with no supplementary group
// and no capability in any set (the bounding set emptied first, while
// CAP_SETPCAP is still held), no_new_privs set, and SIGKILL if the
// supervisor dies (the uid change clears that setting).
func dropPrivileges(uid, gid int) error {
	if err := sandbox.DropBoundingSet(); err != nil {
		return err
	}
	if err := unix.Setgroups(nil); err != nil {
		return fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := unix.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := unix.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	if err := sandbox.DropCapabilities(); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("set the parent-death signal: %w", err)
	}
	return nil
}
