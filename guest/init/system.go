package voltinit

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/voltvmm/volt/guest/marker"
	"golang.org/x/sys/unix"
)

// Mount is one file system init mounts at boot and unmounts at power-off.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// DefaultMounts are mounted in this order and unmounted in the reverse one.
var DefaultMounts = []Mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// System is every kernel call init makes. Linux is the real one; DryRun
// logs the calls that would change the machine; tests record the order.
type System interface {
	// Mark writes a boot marker; best-effort, so it returns nothing.
	Mark(s marker.Stage)
	MkdirAll(path string) error
	// Mounted reports whether path is already a mount point, so that init
	// leaves alone what the kernel (devtmpfs automount) or an earlier
	// stage mounted.
	Mounted(path string) (bool, error)
	Mount(m Mount) error
	Unmount(target string) error
	// AttachConsole makes sure fds 0–2 are the console, which they are not
	// when the kernel found no /dev/console before /dev was mounted.
	AttachConsole() error
	ReadFile(path string) ([]byte, error)
	Exists(path string) bool
	Sethostname(name string) error
	Setdomainname(name string) error
	// SetupInterface brings a link up and, when valid, adds addr and a
	// default route via gw.
	SetupInterface(name string, addr netip.Prefix, gw netip.Addr) error
	// Start runs argv in a new session with the console as stdio.
	Start(argv, env []string) (pid int, err error)
	// Reap collects one exited child without blocking: pid 0 means
	// children remain but none has exited; ECHILD means none remain.
	// Children are those Start made and orphans the kernel gave init;
	// not the processes other threads of init started (see Linux.Reap).
	Reap() (pid int, status unix.WaitStatus, err error)
	// Kill sends sig; pid -1 means every process but init.
	Kill(pid int, sig unix.Signal) error
	Sync()
	Reboot(cmd int) error
}

// CheckPID refuses to run the boot sequence outside PID 1, where mounting
// over /proc, kill(-1) and power-off would hit the host.
func CheckPID(pid int, dryRun bool) error {
	if pid != 1 && !dryRun {
		return fmt.Errorf("running as pid %d, not 1: volt-init mounts, kills every process and powers off; use --dry-run to try it outside a VM", pid)
	}
	return nil
}

// Linux is the System of a real PID 1.
type Linux struct {
	PortMarker
}

var _ System = (*Linux)(nil)

func (*Linux) MkdirAll(path string) error { return os.MkdirAll(path, 0o755) }

func (*Linux) Mounted(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Lstat(path+"/..", &parent); err != nil {
		return false, fmt.Errorf("stat %s/..: %w", path, err)
	}
	// A mount point lies on another device than its parent; the root of
	// the tree has itself as parent and counts as mounted.
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

func (*Linux) Mount(m Mount) error {
	return unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
}

// Unmount detaches a busy file system rather than leaving it mounted: at
// power-off the console still holds /dev open.
func (*Linux) Unmount(target string) error {
	err := unix.Unmount(target, 0)
	if err == unix.EBUSY {
		err = unix.Unmount(target, unix.MNT_DETACH)
	}
	return err
}

func (*Linux) AttachConsole() error {
	if _, err := unix.FcntlInt(0, unix.F_GETFD, 0); err == nil {
		return nil
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console: %w", err)
	}
	for target := 0; target <= 2; target++ {
		if fd == target {
			continue
		}
		if err := unix.Dup3(fd, target, 0); err != nil {
			return fmt.Errorf("dup /dev/console to fd %d: %w", target, err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}

func (*Linux) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

func (*Linux) Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (*Linux) Sethostname(name string) error { return unix.Sethostname([]byte(name)) }

func (*Linux) Setdomainname(name string) error { return unix.Setdomainname([]byte(name)) }

func (*Linux) SetupInterface(name string, addr netip.Prefix, gw netip.Addr) error {
	return setupInterface(name, addr, gw)
}

func (*Linux) Start(argv, env []string) (int, error) { return startProcess(argv, env) }

// Reap waits with __WNOTHREAD: only for children of the calling thread.
// PID 1 must reap every orphan, and os/exec (the guest agent's commands)
// waits for its own children by pid; a plain wait4(-1) would take those
// and leave exec.Cmd.Wait with ECHILD. Volt-init's main goroutine is
// locked to the main thread, which Start forks from and to which the
// kernel reparents orphans (the namespace's child reaper is that thread,
// tid 1); goroutines never run there, so every child os/exec makes
// belongs to another thread and is left to its waiter.
func (*Linux) Reap() (int, unix.WaitStatus, error) {
	var ws unix.WaitStatus
	pid, err := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WNOTHREAD, nil)
	return pid, ws, err
}

func (*Linux) Kill(pid int, sig unix.Signal) error { return unix.Kill(pid, sig) }

func (*Linux) Sync() { unix.Sync() }

func (*Linux) Reboot(cmd int) error { return unix.Reboot(cmd) }

// startProcess starts argv in its own session so that a shell gets job
// control and the workload's process group can be signalled as one. exec
// looks up argv[0] in the workload's PATH, not init's, which the kernel
// leaves unset.
func startProcess(argv, env []string) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("start: empty command")
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		return 0, err
	}
	attr := &syscall.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	// A controlling terminal lets ^C reach the workload; only a tty can be
	// one, and the console may be a pipe under --dry-run.
	if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		attr.Sys.Setctty = true
		attr.Sys.Ctty = 0
	}
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", path, err)
	}
	return pid, nil
}

func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	dirs := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			dirs = v
		}
	}
	for _, dir := range strings.Split(dirs, ":") {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("start %s: not found in PATH %s", name, dirs)
}
