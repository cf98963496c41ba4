// Command volt-vmm runs one KVM microVM. See README.md for the flags and
// the exit statuses.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/sandbox"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/cpu"
	"github.com/voltvmm/volt/vmm/netdev"
	"github.com/voltvmm/volt/vmm/snapshot"
	vnet "github.com/voltvmm/volt/vmm/virtio/net"
	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// processStart is taken during package initialisation, the earliest point
// the VMM's own code runs after exec; voltbench measures from the exec
// itself with eBPF.
var processStart = time.Now()

// Exit statuses, documented in README.md.
const (
	exitOK         = 0 // the guest powered off: it announced a shutdown, then reset
	exitVMMError   = 1 // the VM could not be built (bad kernel, no KVM, …)
	exitUsage      = 2 // bad flags
	exitGuestDied  = 3 // the guest crashed: triple fault, emulation failure
	exitStopped    = 4 // stopped by a signal to the VMM
	exitGuestReset = 5 // the guest reset without announcing a shutdown
	exitGuestPanic = 6 // the guest kernel panicked
)

const usageHead = `Usage: volt-vmm --kernel PATH [flags]
       volt-vmm --api-sock PATH [flags]
       volt-vmm --config-file FILE [--api-sock PATH] [flags]
       volt-vmm --restore DIR [--api-sock PATH]

Runs one KVM microVM until the guest stops.
Exit status: 0 guest powered off, 1 VMM error, 2 bad usage, 3 guest died,
4 stopped by signal, 5 guest reset without a shutdown, 6 guest kernel panic.

`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	f := newFlags()
	f.fs.SetOutput(stderr)
	f.fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		f.fs.PrintDefaults()
	}
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		return usage(stderr, "%v (see --help)", err)
	}
	if f.fs.NArg() > 0 {
		return usage(stderr, "unexpected argument %q", f.fs.Arg(0))
	}
	switch {
	case f.version:
		fmt.Fprintf(stdout, "volt-vmm %s (Firecracker API %s, snapshot format %d.%d)\n", vmmVersion(), api.FirecrackerAPIVersion, snapshot.MajorVersion, snapshot.MinorVersion)
		return exitOK
	case f.describeSnapshot != "":
		st, err := snapshot.ReadStateFile(f.describeSnapshot)
		if err != nil {
			fmt.Fprintf(stderr, "volt-vmm: %v\n", err)
			return exitVMMError
		}
		fmt.Fprintf(stdout, "v%d.%d.0\n", st.Format.Major, st.Format.Minor)
		return exitOK
	}

	cfg, code := machineConfig(f, stderr)
	if code != exitOK {
		return code
	}
	closeConsole, err := setConsole(&cfg, f.console, stdin, stdout)
	if err != nil {
		return usage(stderr, "--console: %v", err)
	}
	defer closeConsole()

	ctrl := api.NewController(api.Options{
		ID:         f.id,
		VMMVersion: vmmVersion(),
		Base:       cfg,
		LogOutput:  stderr,
		LogLevel:   slog.LevelWarn,
	})
	defer ctrl.CloseForExit()
	if f.logPath != "" || f.level != "" || f.showLevel || f.showLogOrigin || f.module != "" {
		l := types.Logger{LogPath: f.logPath, Level: f.level, ShowLevel: f.showLevel, ShowLogOrigin: f.showLogOrigin, Module: f.module}
		if err := ctrl.PutLogger(l); err != nil {
			return usage(stderr, "logger flags: %v", err)
		}
	}
	for _, n := range f.notices() {
		ctrl.Logger().Warn("notice: " + n)
	}
	if f.configFile != "" {
		cf, err := api.LoadConfigFile(f.configFile)
		if err != nil {
			return usage(stderr, "--config-file: %v", err)
		}
		if err := ctrl.Apply(cf); err != nil {
			return usage(stderr, "--config-file %s: %v", f.configFile, err)
		}
	}
	if f.apiSock != "" {
		srv, err := api.Listen(f.apiSock, f.maxPayload)
		if err != nil {
			fmt.Fprintf(stderr, "volt-vmm: %v\n", err)
			return exitVMMError
		}
		if cfg.Confinement.Seccomp.Level != sandbox.LevelOff {
			// The API's threads take the api filter once the process's
			// is in (cfg.Confinement is shared with ctrl's base).
			srv.SetThreadFilter(confineAPIThread)
			cfg.Confinement.ConfineOthers = srv.Confine
		}
		srv.Start(ctrl.Handler(), ctrl.Logger())
		defer shutdown(srv)
	}
	// Without an API nothing else could start the VM: boot now, as
	// Firecracker does with --config-file.
	switch {
	case f.restore != "":
		mem := &types.MemoryBackend{BackendType: types.MemBackendFile, BackendPath: filepath.Join(f.restore, types.SnapshotMemFile)}
		if f.casStore != "" {
			mem = &types.MemoryBackend{BackendType: types.MemBackendCas, BackendPath: f.casStore}
		}
		err := ctrl.LoadSnapshot(context.Background(), types.SnapshotLoadParams{
			SnapshotPath: filepath.Join(f.restore, types.SnapshotStateFile),
			MemBackend:   mem,
			ResumeVM:     true,
		})
		if err != nil {
			fmt.Fprintf(stderr, "volt-vmm: --restore %s: %s\n", f.restore, oneLine(err))
			return exitVMMError
		}
	case f.apiSock == "" || f.configFile != "":
		if err := ctrl.Start(); err != nil {
			fmt.Fprintf(stderr, "volt-vmm: %s\n", oneLine(err))
			return exitVMMError
		}
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	select {
	case <-ctrl.Done():
	case <-ctx.Done():
		ctrl.Stop()
	}
	res, ended := ctrl.Result()
	if m := ctrl.Machine(); m != nil && f.bootTimer {
		vmm.WriteBootTimer(stderr, m.BootStages())
	}
	return exitStatus(stderr, res, ended)
}

// exitStatus reports how the VM ended and returns the matching status.
func exitStatus(stderr io.Writer, res vmm.Result, ended bool) int {
	switch {
	case !ended || res.Reason == vmm.StopCanceled:
		fmt.Fprintln(stderr, "volt-vmm: stopped by signal")
		return exitStopped
	case res.Reason == vmm.StopPowerOff:
		return exitOK
	case res.Reason == vmm.StopReset:
		fmt.Fprintln(stderr, "volt-vmm: the guest reset without announcing a shutdown (a reboot, or a crash that reset it)")
		return exitGuestReset
	case res.Reason == vmm.StopPanic:
		fmt.Fprintf(stderr, "volt-vmm: %v\n", res.Err)
		return exitGuestPanic
	}
	fmt.Fprintf(stderr, "volt-vmm: guest died: %v\n", res.Err)
	return exitGuestDied
}

// machineConfig turns the machine flags into the base configuration that
// the API and the config file then modify.
func machineConfig(f *flags, stderr io.Writer) (vmm.Config, int) {
	cfg := vmm.Config{
		KernelPath:      f.kernel,
		InitrdPath:      f.initrd,
		Cmdline:         f.cmdline,
		CPUs:            f.cpus,
		HugePages:       f.hugepages,
		AllowOvercommit: f.overcommit,
		CPUTemplate:     f.template,
		GuestProfile:    f.guestProfile,
		Origin:          processStart,
		MarkerDelay:     f.markerDelay,
	}
	var err error
	if cfg.MemorySize, err = vmm.ParseSize(f.memory); err != nil {
		return cfg, usage(stderr, "--memory %s: %v", f.memory, err)
	}
	if cfg.Protocol, err = boot.ParseProtocol(f.protocol); err != nil {
		return cfg, usage(stderr, "--boot-protocol: %v", err)
	}
	if cfg.CPUIDMask, err = cpu.ParseMask(f.cpuidMask); err != nil {
		return cfg, usage(stderr, "--cpuid-mask: %v", err)
	}
	switch {
	case f.noAPI && f.apiSock != "":
		return cfg, usage(stderr, "--no-api and --api-sock contradict each other")
	case f.configFile != "" && f.kernel != "":
		return cfg, usage(stderr, "--config-file and --kernel both name the kernel; use one")
	case f.restore != "":
		if c := f.restoreConflicts(); len(c) > 0 {
			return cfg, usage(stderr, "--restore takes the machine from the snapshot; it cannot be combined with %s", strings.Join(c, ", "))
		}
	}
	if err := api.ValidateID(f.id); err != nil {
		return cfg, usage(stderr, "--id: %v", err)
	}
	if err := deviceConfig(f, &cfg); err != nil {
		return cfg, usage(stderr, "%v", err)
	}
	if f.maxPayload <= 0 {
		return cfg, usage(stderr, "--http-api-max-payload-size %d: must be positive", f.maxPayload)
	}
	if f.fs.Changed("start-time-us") {
		origin, err := originAt(f.startTimeUs)
		if err != nil {
			return cfg, usage(stderr, "--start-time-us: %v", err)
		}
		cfg.Origin = origin
	}
	if cfg.Confinement, err = confinement(f); err != nil {
		return cfg, usage(stderr, "%v", err)
	}
	// The vsock device's, however it comes (--vsock, PUT /vsock or the
	// snapshot of --restore or PUT /snapshot/load: ctrl's base carries it).
	if err := vsock.ValidateRequestTimeout(f.vsockConnectTimeout); err != nil {
		return cfg, usage(stderr, "--vsock-connect-timeout: %v", err)
	}
	cfg.VsockRequestTimeout = f.vsockConnectTimeout
	if f.snapshotKillStep != "" {
		step := snapshot.CreateStep(f.snapshotKillStep)
		cfg.AfterSnapshotStep = func(s snapshot.CreateStep) {
			if s == step {
				// tgkill of its own thread: the call a confined VMM
				// may make (SIGKILL still ends the whole process).
				unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGKILL)
			}
		}
	}
	// The kernel may come later, through the API or a config file,
	// unless the flags alone must boot.
	check := cfg
	if f.apiSock != "" || f.configFile != "" || f.restore != "" {
		if check.KernelPath == "" {
			check.KernelPath = "(set later)"
		}
	}
	if err := check.Validate(); err != nil {
		return cfg, usage(stderr, "%s", oneLine(err))
	}
	return cfg, exitOK
}

// deviceConfig adds the virtio devices the flags name.
func deviceConfig(f *flags, cfg *vmm.Config) error {
	for _, s := range f.drives {
		d, err := vmm.ParseDrive(s)
		if err != nil {
			return err
		}
		if d.Volume != "" {
			if f.casStore == "" {
				return fmt.Errorf("--drive %s: a volume= disk needs --cas-store", s)
			}
			d.CASStore = f.casStore
		}
		cfg.Drives = append(cfg.Drives, d)
	}
	switch {
	case f.rootfs != "" && f.volume != "":
		return errors.New("--rootfs and --volume both name the root disk; use one")
	case f.rootfs != "":
		cfg.Drives = append(cfg.Drives, vmm.DriveConfig{ID: "rootfs", Path: f.rootfs, Root: true})
	case f.volume != "":
		if f.casStore == "" {
			return errors.New("--volume needs --cas-store, the store its chunks are in")
		}
		cfg.Drives = append(cfg.Drives, vmm.DriveConfig{ID: "rootfs", Volume: f.volume, CASStore: f.casStore, Root: true})
	}
	for _, s := range f.nets {
		n, err := vnet.ParseSpec(s)
		if err != nil {
			return err
		}
		cfg.Nets = append(cfg.Nets, n)
	}
	switch {
	case f.netBridge != "":
		if f.netBackend != "" && f.netBackend != "virtio-net" && f.netBackend != "vhost-net" {
			return fmt.Errorf("--net-backend %q: want virtio-net or vhost-net", f.netBackend)
		}
		if f.netBackend == "vhost-net" {
			if ok, why := netdev.VhostNetAvailable(); !ok {
				slog.Warn("vhost-net unavailable: " + why)
			}
		}
		cfg.Nets = append(cfg.Nets, vmm.NetConfig{Config: vnet.Config{ID: vnet.DefaultID}, Backend: vnet.BackendConfig{Kind: vnet.BackendBridge, Bridge: f.netBridge}})
	case f.netBackend != "":
		return errors.New("--net-backend needs --net-bridge (or use --net tap=NAME)")
	}
	if f.vsock != "" {
		v, err := vmm.ParseVsock(f.vsock)
		if err != nil {
			return err
		}
		cfg.Vsock = &v
	}
	if f.entropy {
		cfg.Entropy = &vmm.EntropyConfig{}
	}
	return nil
}

// originAt converts a CLOCK_MONOTONIC time in µs (what Firecracker's jailer
// passes as --start-time-us) into the time.Time the boot timeline starts
// at.
func originAt(us int64) (time.Time, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}, fmt.Errorf("read the monotonic clock: %w", err)
	}
	now := ts.Nano() / 1000
	if us <= 0 || us > now {
		return time.Time{}, fmt.Errorf("%d µs is not a past CLOCK_MONOTONIC time (now %d µs)", us, now)
	}
	return time.Now().Add(-time.Duration(now-us) * time.Microsecond), nil
}

// oneLine folds a multi-line error (register dumps) for a one-line report.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// shutdown closes the API socket, giving requests in flight a moment.
func shutdown(srv *api.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

// vmmVersion is the module version stamped by the Go toolchain, for GET /.
func vmmVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func usage(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "volt-vmm: "+format+"\n", args...)
	return exitUsage
}

// setConsole wires the serial console as --console asks.
func setConsole(cfg *vmm.Config, spec string, stdin io.Reader, stdout io.Writer) (func(), error) {
	switch {
	case spec == "stdio":
		cfg.Console, cfg.ConsoleInput = stdout, stdin
		return func() {}, nil
	case spec == "none":
		return func() {}, nil
	case strings.HasPrefix(spec, "file:"):
		path := strings.TrimPrefix(spec, "file:")
		if path == "" {
			return nil, errors.New("file: needs a path")
		}
		f, err := openConsoleFile(path)
		if err != nil {
			return nil, err
		}
		cfg.Console = f
		return func() { f.Close() }, nil
	}
	return nil, fmt.Errorf("%q is not stdio, file:PATH or none", spec)
}

// openConsoleFile opens a console log: a regular file (created or
// truncated) or a character device such as a terminal; a FIFO without a
// reader would block the open, and one with a slow reader would stall the
// vCPU that writes the UART, so FIFOs are refused.
func openConsoleFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_NONBLOCK, 0o644)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, err
	case st.Mode().IsRegular():
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, err
		}
	case st.Mode()&os.ModeCharDevice != 0:
	default:
		f.Close()
		return nil, fmt.Errorf("%s is neither a regular file nor a character device", path)
	}
	// The open only had to be non-blocking; the UART writes whole lines.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
