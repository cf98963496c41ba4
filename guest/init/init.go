package voltinit

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"time"

	"github.com/voltvmm/volt/guest/marker"
	"golang.org/x/sys/unix"
)

const (
	// DefaultShell runs when no volt.run is given, so that a VM booted by
	// hand is usable.
	DefaultShell = "/bin/sh"
	// DefaultGrace is how long processes get between SIGTERM and SIGKILL
	// at power-off.
	DefaultGrace = 2 * time.Second
	// killWait bounds the wait for SIGKILLed processes to be reaped; they
	// die at once unless stuck in the kernel, and then waiting longer does
	// not help.
	killWait = 500 * time.Millisecond

	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// ShutdownSignals are the signals that make init power off: SIGTERM from a
// kill inside the guest, SIGINT from Ctrl-Alt-Del (see setUp), SIGPWR from a
// power daemon.
var ShutdownSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGPWR}

// NotifySignals registers the signals Init waits on. Register them before
// anything could send them: a SIGTERM that arrives before the handler is
// dropped, since the kernel discards unhandled signals to PID 1.
func NotifySignals() chan os.Signal {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, append([]os.Signal{unix.SIGCHLD}, ShutdownSignals...)...)
	return ch
}

// Init runs the boot, the workload and the power-off.
type Init struct {
	Sys     System
	Console io.Writer
	// Signals delivers SIGCHLD and ShutdownSignals (see NotifySignals).
	Signals <-chan os.Signal
	// Grace is the SIGTERM-to-SIGKILL delay; zero means DefaultGrace.
	Grace time.Duration
	// Args and Environ are init's own; their volt.* entries count as
	// parameters, since the kernel passes what follows "--" on its command
	// line to init as arguments.
	Args    []string
	Environ []string

	mounted []string // targets, in mount order
}

func (in *Init) logf(format string, args ...any) {
	fmt.Fprintf(in.Console, "volt-init: "+format+"\n", args...)
}

// Run boots, supervises the workload and powers off. On a real PID 1 it
// does not return unless power-off fails; under DryRun it returns nil after
// the logged power-off.
func (in *Init) Run() error {
	cfg, err := in.setUp()
	if err == nil {
		err = in.supervise(cfg)
	}
	if err != nil {
		in.logf("error: %v", err)
	}
	return in.shutdown()
}

// setUp mounts, reads the configuration, names the machine and configures
// the network, then announces readiness.
func (in *Init) setUp() (Config, error) {
	for _, m := range DefaultMounts {
		if err := in.mount(m); err != nil {
			return Config{}, err
		}
	}
	if err := in.Sys.AttachConsole(); err != nil {
		in.logf("warning: %v", err)
	}
	// With Ctrl-Alt-Del turned off the kernel sends SIGINT to init instead
	// of rebooting at once, so a VMM's SendCtrlAltDel becomes an orderly
	// power-off.
	if err := in.Sys.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		in.logf("warning: turn off Ctrl-Alt-Del reboot: %v", err)
	}

	cfg, err := in.config()
	if err != nil {
		return Config{}, err
	}
	if cfg.Hostname != "" {
		if err := in.Sys.Sethostname(cfg.Hostname); err != nil {
			return Config{}, fmt.Errorf("set hostname %s: %w", cfg.Hostname, err)
		}
	}
	if err := in.Sys.SetupInterface("lo", netip.Prefix{}, netip.Addr{}); err != nil {
		in.logf("warning: loopback: %v", err)
	}
	if cfg.Addr.IsValid() {
		if err := in.Sys.SetupInterface("eth0", cfg.Addr, cfg.Gateway); err != nil {
			return Config{}, fmt.Errorf("network: %w", err)
		}
	}

	in.logf("ready cpus=%d mem=%d", in.cpus(), in.memMiB())
	in.Sys.Mark(marker.Ready)
	return cfg, nil
}

func (in *Init) mount(m Mount) error {
	if err := in.Sys.MkdirAll(m.Target); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Target, err)
	}
	if ok, err := in.Sys.Mounted(m.Target); err == nil && ok {
		return nil // mounted before us; not ours to unmount
	}
	err := in.Sys.Mount(m)
	if errors.Is(err, unix.EBUSY) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
	}
	in.mounted = append(in.mounted, m.Target)
	return nil
}

// config gathers volt.* parameters from the kernel command line, then from
// init's environment and arguments, later sources overriding earlier ones.
func (in *Init) config() (Config, error) {
	raw, err := in.Sys.ReadFile("/proc/cmdline")
	if err != nil {
		return Config{}, fmt.Errorf("read kernel command line: %w", err)
	}
	params := SplitKernelCmdline(string(raw))
	params = append(params, in.Environ...)
	params = append(params, in.Args...)
	cfg, warnings, err := ParseParams(params)
	for _, w := range warnings {
		in.logf("warning: %s", w)
	}
	return cfg, err
}

func (in *Init) cpus() int {
	if b, err := in.Sys.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if n, err := ParseCPUList(b); err == nil {
			return n
		}
	}
	return runtime.NumCPU()
}

func (in *Init) memMiB() uint64 {
	b, err := in.Sys.ReadFile("/proc/meminfo")
	if err != nil {
		in.logf("warning: read /proc/meminfo: %v", err)
		return 0
	}
	mib, err := ParseMemTotal(b)
	if err != nil {
		in.logf("warning: %v", err)
	}
	return mib
}

// supervise starts the workload and reaps children until the workload ends
// or a shutdown signal arrives.
func (in *Init) supervise(cfg Config) error {
	argv := cfg.Run
	if argv == nil && in.Sys.Exists(DefaultShell) {
		argv = []string{DefaultShell}
	}
	workload := 0
	if argv == nil {
		in.logf("no volt.run and no %s: waiting for a shutdown signal", DefaultShell)
	} else {
		pid, err := in.Sys.Start(argv, WorkloadEnv(in.Environ, cfg.Env))
		if err != nil {
			return err
		}
		workload = pid
		in.Sys.Mark(marker.Workload)
	}
	for sig := range in.Signals {
		if sig != unix.SIGCHLD {
			in.logf("%v: shutting down", sig)
			return nil
		}
		for {
			pid, ws, err := in.Sys.Reap()
			if err == unix.EINTR {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if pid == workload {
				in.logf("workload exited %s", describeStatus(ws))
				return nil
			}
		}
	}
	return errors.New("signal channel closed")
}

func describeStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal=" + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("status=%d", ws.ExitStatus())
}

// shutdown stops every process, unmounts and powers off (or resets; see
// stopCommand). Root is remounted
// read-only rather than unmounted, which keeps an ext4 root clean.
func (in *Init) shutdown() error {
	in.Sys.Mark(marker.Shutdown)
	stop := in.stopCommand()
	grace := in.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if !in.waitChildren(0) {
		_ = in.Sys.Kill(-1, unix.SIGTERM) // ESRCH: nobody left, which is fine
		if !in.waitChildren(grace) {
			_ = in.Sys.Kill(-1, unix.SIGKILL)
			if !in.waitChildren(killWait) {
				in.logf("warning: processes survived SIGKILL")
			}
		}
	}
	in.Sys.Sync()
	for i := len(in.mounted) - 1; i >= 0; i-- {
		if err := in.Sys.Unmount(in.mounted[i]); err != nil {
			in.logf("warning: unmount %s: %v", in.mounted[i], err)
		}
	}
	in.mounted = nil
	_ = in.Sys.Mount(Mount{Target: "/", Flags: unix.MS_REMOUNT | unix.MS_RDONLY}) // an initramfs may refuse; nothing to lose there
	in.Sys.Sync()
	if err := in.Sys.Reboot(stop); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}

// stopCommand picks the reboot(2) command that ends the VM. Without ACPI
// the kernel turns POWER_OFF into a halt that no VMM notices, so there init
// resets instead: with reboot=k on the command line the kernel pulses the
// i8042 reset line, on which a microVM's VMM exits (Firecracker's guests
// stop the same way). It must be asked while /sys is mounted.
func (in *Init) stopCommand() int {
	if in.Sys.Exists("/sys/firmware/acpi") {
		return unix.LINUX_REBOOT_CMD_POWER_OFF
	}
	return unix.LINUX_REBOOT_CMD_RESTART
}

// waitChildren reaps until no child remains (true) or d passes (false).
func (in *Init) waitChildren(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		if in.reapAll() {
			return true
		}
		select {
		case <-in.Signals: // SIGCHLD, or a repeated shutdown request: reap again either way
		case <-timer.C:
			return in.reapAll()
		}
	}
}

// reapAll collects every exited child and reports whether none remain.
func (in *Init) reapAll() bool {
	for {
		pid, _, err := in.Sys.Reap()
		switch {
		case err == unix.EINTR:
		case err != nil:
			return true // ECHILD; any other error means there is nothing we can wait for
		case pid == 0:
			return false
		}
	}
}

// WorkloadEnv builds the workload's environment: init's own without volt.*
// entries, PATH, HOME and TERM defaults where missing, then extra (volt.env)
// replacing same-named entries.
func WorkloadEnv(inherited, extra []string) []string {
	var keys []string
	vals := map[string]string{}
	set := func(kv string, override bool) {
		k, _, _ := strings.Cut(kv, "=")
		if _, seen := vals[k]; !seen {
			keys = append(keys, k)
		} else if !override {
			return
		}
		vals[k] = kv
	}
	for _, kv := range inherited {
		if !strings.HasPrefix(kv, ParamPrefix) && strings.Contains(kv, "=") {
			set(kv, true)
		}
	}
	for _, kv := range []string{"PATH=" + defaultPath, "HOME=/root", "TERM=linux"} {
		set(kv, false)
	}
	for _, kv := range extra {
		set(kv, true)
	}
	env := make([]string, 0, len(keys))
	for _, k := range keys {
		env = append(env, vals[k])
	}
	return env
}
