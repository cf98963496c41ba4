package voltinit

import (
	"fmt"
	"io"
	"net/netip"
	"sync"

	"github.com/voltvmm/volt/guest/marker"
	"golang.org/x/sys/unix"
)

// DryRun is the System for running volt-init outside a VM: it really starts
// and reaps the workload, and prints every call that would change the
// machine instead of making it.
type DryRun struct {
	Log  io.Writer
	real Linux

	mu      sync.Mutex
	started []int // process groups to signal in place of kill(-1)
}

var _ System = (*DryRun)(nil)

// NewDryRun returns a DryRun logging to log. It makes the process a child
// subreaper, so that orphans of the workload come back to it as they would
// to PID 1.
func NewDryRun(log io.Writer) (*DryRun, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("become child subreaper: %w", err)
	}
	return &DryRun{Log: log}, nil
}

func (d *DryRun) logf(format string, args ...any) {
	fmt.Fprintf(d.Log, "volt-init: dry-run: "+format+"\n", args...)
}

func (d *DryRun) Mark(s marker.Stage)               { d.logf("marker %#02x %s", uint8(s), s) }
func (d *DryRun) MkdirAll(path string) error        { d.logf("mkdir -p %s", path); return nil }
func (d *DryRun) Mounted(path string) (bool, error) { return false, nil }
func (d *DryRun) Mount(m Mount) error {
	if m.Flags&unix.MS_REMOUNT != 0 {
		d.logf("mount -o remount %s flags=%#x", m.Target, m.Flags)
		return nil
	}
	d.logf("mount -t %s %s %s flags=%#x data=%q", m.FSType, m.Source, m.Target, m.Flags, m.Data)
	return nil
}
func (d *DryRun) Unmount(target string) error          { d.logf("umount %s", target); return nil }
func (d *DryRun) AttachConsole() error                 { return nil }
func (d *DryRun) ReadFile(path string) ([]byte, error) { return d.real.ReadFile(path) }
func (d *DryRun) Exists(path string) bool              { return d.real.Exists(path) }
func (d *DryRun) Sethostname(name string) error        { d.logf("hostname %s", name); return nil }
func (d *DryRun) Setdomainname(name string) error      { d.logf("domainname %s", name); return nil }
func (d *DryRun) Reap() (int, unix.WaitStatus, error)  { return d.real.Reap() }
func (d *DryRun) Sync()                                { d.logf("sync") }
func (d *DryRun) Reboot(cmd int) error {
	name := map[int]string{
		unix.LINUX_REBOOT_CMD_CAD_OFF:   "ctrl-alt-del off",
		unix.LINUX_REBOOT_CMD_POWER_OFF: "power off",
		unix.LINUX_REBOOT_CMD_RESTART:   "reset",
	}[cmd]
	d.logf("reboot %#x %s", cmd, name)
	return nil
}
func (d *DryRun) SetupInterface(name string, addr netip.Prefix, gw netip.Addr) error {
	msg := "link " + name + " up"
	if addr.IsValid() {
		msg += " addr " + addr.String()
	}
	if gw.IsValid() {
		msg += " default via " + gw.String()
	}
	d.logf("%s", msg)
	return nil
}

func (d *DryRun) Start(argv, env []string) (int, error) {
	pid, err := d.real.Start(argv, env)
	if err == nil {
		d.mu.Lock()
		d.started = append(d.started, pid)
		d.mu.Unlock()
	}
	return pid, err
}

// Kill narrows kill(-1) to the process groups init started, which on a
// host would otherwise mean every process of the user.
func (d *DryRun) Kill(pid int, sig unix.Signal) error {
	if pid != -1 {
		return unix.Kill(pid, sig)
	}
	d.logf("kill -%d -1 (sent to the workload's process groups only)", sig)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.started {
		_ = unix.Kill(-p, sig) // a group that is gone already is fine
	}
	return nil
}
