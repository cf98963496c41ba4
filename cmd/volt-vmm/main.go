// Command volt-vmm runs one KVM microVM. See README.md for the flags.
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

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/cpu"
)

// processStart is taken during package initialisation, the earliest point
// the VMM's own code runs after exec; voltbench measures from the exec
// itself with eBPF.
var processStart = time.Now()

// Exit statuses.
const (
	exitOK        = 0 // the guest powered off or reset
	exitVMMError  = 1 // the VM could not be built (bad kernel, no KVM, …)
	exitUsage     = 2 // bad flags
	exitGuestDied = 3 // the guest crashed: triple fault, emulation failure
	exitStopped   = 4 // stopped by a signal to the VMM
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("volt-vmm", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		kernel      = fs.String("kernel", "", "guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage")
		initrd      = fs.String("initrd", "", "initial ramdisk to load")
		cmdline     = fs.String("cmdline", vmm.DefaultCmdline, "kernel command line")
		memSize     = fs.String("memory", "128M", "guest memory (K, M, G suffixes; a plain number is MiB)")
		cpus        = fs.Int("cpus", vmm.DefaultCPUs, "number of vCPUs")
		hugepages   = fs.Bool("hugepages", false, "back guest memory with 2 MiB huge pages (falls back to THP with a warning)")
		console     = fs.String("console", "stdio", "serial console: stdio, file:PATH or none")
		bootTimer   = fs.Bool("boot-timer", false, "print the boot timeline (exec→stage in µs) to stderr when the VM stops")
		protocol    = fs.String("boot-protocol", "auto", "boot protocol: auto, pvh or linux64")
		template    = fs.String("cpu-template", "host", "CPUID template: "+strings.Join(cpu.TemplateNames(), ", "))
		cpuidMask   = fs.String("cpuid-mask", "", "comma-separated CPU features to hide from the guest (e.g. cx16,popcnt)")
		markerDelay = fs.Duration("test-marker-delay", 0, "testing only: stall the guest this long at every boot marker, to inject a regression")
		apiSock     = fs.String("api-sock", "", "serve the Firecracker-compatible API on this Unix socket and boot on InstanceStart (see docs/api.md)")
		configFile  = fs.String("config-file", "", "boot from a Firecracker JSON config file (boot-source, machine-config, ...)")
		noAPI       = fs.Bool("no-api", false, "serve no API (the default unless --api-sock is given; for Firecracker-compatible command lines)")
		instanceID  = fs.String("id", api.DefaultID, "instance id reported by GET /")
		restoreDir  = fs.String("restore", "", "restore the VM snapshotted into DIR ("+types.SnapshotStateFile+" and "+types.SnapshotMemFile+") and resume it")
	)
	fs.MarkHidden("test-marker-delay")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: volt-vmm --kernel PATH [flags]\n       volt-vmm --api-sock PATH [flags]\n       volt-vmm --config-file FILE [--api-sock PATH] [flags]\n\nRuns one KVM microVM until the guest powers off.\nExit status: 0 guest powered off, 1 VMM error, 2 bad usage, 3 guest died, 4 stopped by signal.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		return usage(stderr, "%v (see --help)", err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "volt-vmm: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}

	cfg := vmm.Config{
		KernelPath:  *kernel,
		InitrdPath:  *initrd,
		Cmdline:     *cmdline,
		CPUs:        *cpus,
		HugePages:   *hugepages,
		CPUTemplate: *template,
		Origin:      processStart,
		MarkerDelay: *markerDelay,
	}
	var err error
	if cfg.MemorySize, err = vmm.ParseSize(*memSize); err != nil {
		return usage(stderr, "--memory: %v", err)
	}
	if cfg.Protocol, err = boot.ParseProtocol(*protocol); err != nil {
		return usage(stderr, "--boot-protocol: %v", err)
	}
	if cfg.CPUIDMask, err = cpu.ParseMask(*cpuidMask); err != nil {
		return usage(stderr, "--cpuid-mask: %v", err)
	}
	if *noAPI && *apiSock != "" {
		return usage(stderr, "--no-api and --api-sock contradict each other")
	}
	if *configFile != "" && *kernel != "" {
		return usage(stderr, "--config-file and --kernel both name the kernel; use one")
	}
	if *restoreDir != "" && (*kernel != "" || *configFile != "") {
		return usage(stderr, "--restore resumes a snapshot; it takes no --kernel or --config-file")
	}
	if err := api.ValidateID(*instanceID); err != nil {
		return usage(stderr, "--id: %v", err)
	}
	closeConsole, err := setConsole(&cfg, *console, stdin, stdout)
	if err != nil {
		return usage(stderr, "--console: %v", err)
	}
	defer closeConsole()
	if err := validateFlags(cfg, *apiSock == "" && *configFile == "" && *restoreDir == ""); err != nil {
		return usage(stderr, "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}

	ctrl := api.NewController(api.Options{
		ID:         *instanceID,
		VMMVersion: vmmVersion(),
		Base:       cfg,
		LogOutput:  stderr,
		LogLevel:   slog.LevelWarn,
	})
	defer ctrl.CloseForExit()
	if *configFile != "" {
		cf, err := api.LoadConfigFile(*configFile)
		if err != nil {
			return usage(stderr, "--config-file: %v", err)
		}
		if err := ctrl.Apply(cf); err != nil {
			return usage(stderr, "--config-file %s: %v", *configFile, err)
		}
	}
	if *apiSock != "" {
		srv, err := api.Listen(*apiSock, 0)
		if err != nil {
			fmt.Fprintf(stderr, "volt-vmm: %v\n", err)
			return exitVMMError
		}
		srv.Start(ctrl.Handler(), ctrl.Logger())
		defer shutdown(srv)
	}
	// Without an API nothing else could start the VM: boot now, as
	// Firecracker does with --config-file.
	switch {
	case *restoreDir != "":
		err := ctrl.LoadSnapshot(context.Background(), types.SnapshotLoadParams{
			SnapshotPath: filepath.Join(*restoreDir, types.SnapshotStateFile),
			MemBackend:   &types.MemoryBackend{BackendType: "File", BackendPath: filepath.Join(*restoreDir, types.SnapshotMemFile)},
			ResumeVM:     true,
		})
		if err != nil {
			fmt.Fprintf(stderr, "volt-vmm: --restore %s: %s\n", *restoreDir, strings.ReplaceAll(err.Error(), "\n", "; "))
			return exitVMMError
		}
	case *apiSock == "" || *configFile != "":
		if err := ctrl.Start(); err != nil {
			fmt.Fprintf(stderr, "volt-vmm: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
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
	if m := ctrl.Machine(); m != nil && *bootTimer {
		vmm.WriteBootTimer(stderr, m.BootStages())
	}
	switch {
	case !ended || res.Reason == vmm.StopCanceled:
		fmt.Fprintln(stderr, "volt-vmm: stopped by signal")
		return exitStopped
	case res.Reason == vmm.StopPowerOff:
		return exitOK
	}
	fmt.Fprintf(stderr, "volt-vmm: guest died: %v\n", res.Err)
	return exitGuestDied
}

// validateFlags checks the VM flags. The kernel may come later, through
// the API or a config file, unless the flags alone must boot.
func validateFlags(cfg vmm.Config, needKernel bool) error {
	if !needKernel && cfg.KernelPath == "" {
		cfg.KernelPath = "(set later)"
	}
	return cfg.Validate()
}

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
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, err
		}
		cfg.Console = f
		return func() { f.Close() }, nil
	}
	return nil, fmt.Errorf("%q is not stdio, file:PATH or none", spec)
}
