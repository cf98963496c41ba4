package voltinit

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
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

	// kernelIPDoneFile exists when the kernel's own IP autoconfiguration
	// (CONFIG_IP_PNP) is built in and has handled ip=.
	kernelIPDoneFile = "/proc/net/pnp"
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
	// Agent, when set, is started after the network is configured and
	// before the ready marker (unless volt.agent=off), and stopped first
	// at power-off.
	Agent Agent
	// Generation, when set, detects restores from a snapshot: its
	// baseline is read at boot, and it is polled with a ticker from
	// NewTicker every volt.genid_interval (GenIDInterval by default).
	// CheckGeneration checks it on demand.
	Generation *GenerationWatcher
	NewTicker  func(time.Duration) (StoppableTicker, error)

	mounted      []string // targets, in mount order
	agentStarted bool
	ticker       StoppableTicker
	pollDone     chan struct{} // closed when the generation poll ends
}

// StoppableTicker is a Ticker that its owner closes.
type StoppableTicker interface {
	Ticker
	Close() error
}

func (in *Init) logf(format string, args ...any) {
	fmt.Fprintf(in.Console, "volt-init: "+format+"\n", args...)
}

// Run boots, supervises the workload and powers off. On a real PID 1 it
// does not return unless power-off fails; under DryRun it returns nil after
// the logged power-off.
//
// Run must be called on the goroutine locked to the process's main thread
// (cmd/volt-init locks it in init), and Sys.Start and Sys.Reap are called
// only from it: Linux.Reap collects the children of that thread alone, so
// that it never takes a child that os/exec, on another thread, waits for
// (the guest agent's commands). Run locks its goroutine to its thread
// itself, so that at least the workload is always reaped; orphans reach it
// only on the main thread.
func (in *Init) Run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
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
	if cfg.Domain != "" {
		if err := in.Sys.Setdomainname(cfg.Domain); err != nil {
			return Config{}, fmt.Errorf("set domain name %s: %w", cfg.Domain, err)
		}
	}
	if err := in.Sys.SetupInterface("lo", netip.Prefix{}, netip.Addr{}); err != nil {
		in.logf("warning: loopback: %v", err)
	}
	if cfg.Addr.IsValid() {
		if err := in.Sys.SetupInterface(cfg.Interface(), cfg.Addr, cfg.Gateway); err != nil {
			return Config{}, fmt.Errorf("network: %w", err)
		}
	}
	in.startGeneration(cfg)
	if in.Agent != nil && cfg.NoAgent {
		in.logf("agent off: volt.agent=off")
	} else if in.Agent != nil {
		// A guest without the agent still runs its workload: failing to
		// listen is a warning, and whoever waits for the agent sees why
		// on the console.
		switch err := in.Agent.Start(); {
		case err == nil:
			in.agentStarted = true
		case errors.Is(err, ErrNoVsock):
			in.logf("agent off: %v", err)
		default:
			in.logf("warning: %v", err)
		}
	}

	in.logf("ready cpus=%d mem=%d", in.cpus(), in.memMiB())
	in.Sys.Mark(marker.Ready)
	return cfg, nil
}

// startGeneration reads the generation ID's baseline and starts its poll,
// which runs until shutdown. A guest without the device (another VMM) boots
// the same, without clone detection.
func (in *Init) startGeneration(cfg Config) {
	if in.Generation == nil {
		return
	}
	if err := in.Generation.Baseline(); err != nil {
		in.logf("generation ID unavailable, clone detection off: %v", err)
		return
	}
	interval := cfg.GenIDInterval
	if interval == 0 {
		interval = GenIDInterval
	}
	if interval < 0 || in.NewTicker == nil {
		in.logf("generation ID polling off: checked before each agent request only")
		return
	}
	t, err := in.NewTicker(interval)
	if err != nil {
		in.logf("warning: generation ID polling off: %v", err)
		return
	}
	in.ticker, in.pollDone = t, make(chan struct{})
	go func() {
		defer close(in.pollDone)
		in.Generation.Poll(t)
	}()
}

// CheckGeneration checks the generation ID now, if clone detection is on;
// the agent calls it before it answers a connection.
func (in *Init) CheckGeneration() {
	if in.Generation == nil {
		return
	}
	if _, err := in.Generation.Check(); err != nil && !errors.Is(err, ErrNoBaseline) {
		in.logf("generation ID: %v", err)
	}
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
	// A kernel with CONFIG_IP_PNP has configured ip= itself (and shows
	// /proc/net/pnp); ours has not, and passes it to init, as every
	// parameter it does not know, in the environment too.
	if in.Sys.Exists(kernelIPDoneFile) {
		params = slices.DeleteFunc(params, func(p string) bool { return strings.HasPrefix(p, KernelIPParam+"=") })
	}
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
	// The agent first, so that no request starts once power-off has; a
	// request in flight (the one that ended the workload, say) still gets
	// its answer.
	if in.agentStarted {
		in.Agent.Stop(grace)
		in.agentStarted = false
	}
	if in.ticker != nil {
		in.ticker.Close()
		<-in.pollDone
		in.ticker = nil
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
// entries and the kernel's ip= (parameters for init that the kernel passes
// in the environment), PATH, HOME and TERM defaults where missing, then
// extra (volt.env) replacing same-named entries.
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
		if !strings.HasPrefix(kv, ParamPrefix) && !strings.HasPrefix(kv, KernelIPParam+"=") && strings.Contains(kv, "=") {
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
