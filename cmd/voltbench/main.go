// Command voltbench boots guests under KVM many times and times every stage
// from the exec of the VMM to the guest's PID 1 and exit, from the kernel's
// side with eBPF, so the same measurement applies to any VMM.
//
//	voltbench [boot]   boot the probe guest N times under volt-vmm, print the table
//	voltbench compare  the same boots under volt-vmm and QEMU, side by side
//	voltbench gate     fail when a stage regressed against a baseline
//	voltbench serve    boot periodically and export Prometheus metrics
//	voltbench restore  restore a snapshot of the probe N times, against cold boots
//	voltbench clones   run N clones of one snapshot at once; their shared memory
//
// It needs root (eBPF, tracefs) and /dev/kvm.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/probe"
)

// Exit statuses.
const (
	exitOK        = 0
	exitRegressed = 1 // gate: a stage regressed
	exitUsage     = 2
	exitError     = 3 // could not boot, trace or judge
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

const usageText = `Usage: voltbench [boot|compare|gate|serve|restore|clones] [flags]

  boot      boot the guest -n times under --vmm and print p50/p90/p99/max per stage (default)
  compare   boot under volt-vmm and QEMU, interleaved, and print both side by side;
            or: compare A.json [B.json] to compare saved runs
  gate      compare a fresh run (or --candidate FILE) with --baseline FILE; exit 1 on a regression
  serve     boot every --interval and serve Prometheus metrics on --metrics-listen
  restore   snapshot the probe once, restore it -n times (interleaved with as many cold
            boots, --compare-boot) and print both per stage
  clones    restore -n clones of one snapshot at once and print their RSS/PSS and
            shared pages from /proc/PID/smaps_rollup, and their generation IDs

Stages are timed from the exec of the VMM with eBPF (root and /dev/kvm needed).
Run 'voltbench CMD --help' for the flags of CMD.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "boot"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "boot":
		return cmdBoot(ctx, args, stdout, stderr)
	case "compare":
		return cmdCompare(ctx, args, stdout, stderr)
	case "gate":
		return cmdGate(ctx, args, stdout, stderr)
	case "serve":
		return cmdServe(ctx, args, stdout, stderr)
	case "restore":
		return cmdRestore(ctx, args, stdout, stderr)
	case "clones":
		return cmdClones(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	fmt.Fprintf(stderr, "voltbench: unknown command %q\n%s", cmd, usageText)
	return exitUsage
}

// common holds the flags every boot-running command shares.
type common struct {
	vmm, vmmBin, qemuBin, guest string
	kernel, initrd, cmdline     string
	memory                      string
	cpus, n                     int
	timeout                     time.Duration
	vmmArgs                     []string
	jsonOut, metricsAddr        string
	progress, noProgress        bool
}

func (c *common) register(fs *pflag.FlagSet, defaultN int) {
	fs.StringVar(&c.vmm, "vmm", bench.VMMVolt, "VMM to boot: volt or qemu")
	fs.StringVar(&c.vmmBin, "vmm-bin", "", "volt-vmm binary (default: bin/volt-vmm in the repository)")
	fs.StringVar(&c.qemuBin, "qemu-bin", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&c.guest, "guest", bench.GuestProbe, "guest: probe (build/guest/probe.elf) or linux (build/guest/vmlinux + initramfs.cpio.gz)")
	fs.StringVar(&c.kernel, "kernel", "", "guest kernel (default: by --guest, under build/guest)")
	fs.StringVar(&c.initrd, "initrd", "", "initramfs for --guest linux (default: build/guest/initramfs.cpio.gz)")
	fs.StringVar(&c.cmdline, "cmdline", bench.DefaultLinuxCmdline, "kernel command line for --guest linux")
	fs.StringVar(&c.memory, "memory", "128M", "guest memory")
	fs.IntVar(&c.cpus, "cpus", 1, "vCPUs")
	fs.IntVarP(&c.n, "boots", "n", defaultN, "boots per VMM")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "per-boot limit; the VMM is killed and the boot counted as failed after it")
	fs.StringArrayVar(&c.vmmArgs, "vmm-arg", nil, "extra argument for the VMM (repeatable), e.g. --vmm-arg=--test-marker-delay=5ms")
	fs.StringVar(&c.jsonOut, "json", "", "write the results, with encoded HDR histograms, to this file")
	fs.StringVar(&c.metricsAddr, "metrics-listen", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while running")
	fs.BoolVar(&c.progress, "progress", false, "draw a progress bar on stderr even when it is not a terminal")
	fs.BoolVar(&c.noProgress, "no-progress", false, "never draw a progress bar")
}

// config builds the boot configuration of one VMM kind.
func (c *common) config(vmm string) (bench.Config, error) {
	cfg := bench.Config{
		VMM: vmm, Guest: c.guest, Kernel: c.kernel, Initrd: c.initrd,
		Memory: c.memory, CPUs: c.cpus, ExtraArgs: c.vmmArgs, Timeout: c.timeout,
	}
	var root string
	needRoot := c.kernel == "" || (vmm == bench.VMMVolt && c.vmmBin == "") || (c.guest == bench.GuestLinux && c.initrd == "")
	if needRoot {
		var err error
		if root, err = bench.RepoRoot(); err != nil {
			return cfg, err
		}
	}
	switch vmm {
	case bench.VMMVolt:
		cfg.VMMBin = c.vmmBin
		if cfg.VMMBin == "" {
			cfg.VMMBin = filepath.Join(root, "bin", "volt-vmm")
		}
		if _, err := os.Stat(cfg.VMMBin); err != nil {
			return cfg, fmt.Errorf("volt-vmm: %w (build it: go build -o bin/volt-vmm ./cmd/volt-vmm, or pass --vmm-bin)", err)
		}
	case bench.VMMQEMU:
		p, err := exec.LookPath(c.qemuBin)
		if err != nil {
			return cfg, fmt.Errorf("qemu: %w (apt-get install qemu-system-x86, or pass --qemu-bin)", err)
		}
		cfg.VMMBin = p
	default:
		return cfg, fmt.Errorf("--vmm %q: want volt or qemu", vmm)
	}
	switch c.guest {
	case bench.GuestProbe:
		if cfg.Kernel == "" {
			cfg.Kernel = filepath.Join(root, "build", "guest", "probe.elf")
			if _, err := os.Stat(cfg.Kernel); err != nil {
				// probe.Path honours $VOLT_PROBE and otherwise builds.
				p, err := probe.Path(context.Background(), filepath.Dir(cfg.Kernel))
				if err != nil {
					return cfg, fmt.Errorf("probe guest: %w", err)
				}
				cfg.Kernel = p
			}
		}
	case bench.GuestLinux:
		if cfg.Kernel == "" {
			cfg.Kernel = filepath.Join(root, "build", "guest", "vmlinux")
		}
		if cfg.Initrd == "" {
			cfg.Initrd = filepath.Join(root, "build", "guest", "initramfs.cpio.gz")
		}
		cfg.Cmdline = c.cmdline
		for _, p := range []string{cfg.Kernel, cfg.Initrd} {
			if _, err := os.Stat(p); err != nil {
				return cfg, fmt.Errorf("linux guest: %w (build it with guest/kernel/build.sh and guest/init/build.sh)", err)
			}
		}
	default:
		return cfg, fmt.Errorf("--guest %q: want probe or linux", c.guest)
	}
	if _, err := os.Stat(cfg.Kernel); err != nil {
		return cfg, fmt.Errorf("kernel: %w", err)
	}
	return cfg, cfg.Validate()
}

func (c *common) progressBar(stderr io.Writer) *bench.Progress {
	if c.noProgress {
		return nil
	}
	if c.progress || isTerminal(stderr) {
		return bench.NewProgress(stderr)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// session loads the tracer, optionally serves metrics, and runs the plan;
// observers see every boot.
func (c *common) session(ctx context.Context, arms []bench.Arm, stderr io.Writer, observers ...func(bench.Arm, bench.Boot)) ([]*bench.Run, error) {
	runner, err := bench.NewRunner()
	if err != nil {
		if errors.Is(err, trace.ErrUnsupported) {
			return nil, fmt.Errorf("%w (voltbench needs root, BTF and tracefs)", err)
		}
		return nil, err
	}
	defer runner.Close()
	plan := bench.Plan{Arms: arms, N: c.n, Progress: c.progressBar(stderr), Log: stderr}
	if c.metricsAddr != "" {
		m := bench.NewMetrics()
		stop, err := serveMetrics(c.metricsAddr, m, stderr)
		if err != nil {
			return nil, err
		}
		defer stop()
		observers = append(observers, func(a bench.Arm, b bench.Boot) { m.Observe(a.Name, b) })
	}
	if len(observers) > 0 {
		plan.Observe = func(a bench.Arm, b bench.Boot) {
			for _, o := range observers {
				o(a, b)
			}
		}
	}
	return runner.RunPlan(ctx, plan)
}

func serveMetrics(addr string, m *bench.Metrics, stderr io.Writer) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(stderr, "voltbench: metrics server: %v\n", err)
		}
	}()
	fmt.Fprintf(stderr, "voltbench: metrics on http://%s/metrics\n", ln.Addr())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
	}, nil
}

func writeJSON(path string, runs []*bench.Run, args []string) error {
	if path == "" {
		return nil
	}
	res := &bench.Results{Created: time.Now().UTC(), Runs: runs, Command: "voltbench " + strings.Join(args, " ")}
	res.Host, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		res.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	data, err := res.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}

func parseFlags(fs *pflag.FlagSet, args []string, stderr io.Writer) (bool, int) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return false, exitOK
		}
		fmt.Fprintf(stderr, "voltbench %s: %v\n", fs.Name(), err)
		return false, exitUsage
	}
	return true, 0
}

func fail(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "voltbench: "+format+"\n", args...)
	return exitError
}

func cmdBoot(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("boot", pflag.ContinueOnError)
	var c common
	c.register(fs, 20)
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "voltbench boot: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg, err := c.config(c.vmm)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	runs, err := c.session(ctx, []bench.Arm{{Name: c.vmm, Config: cfg}}, stderr)
	if len(runs) > 0 {
		bench.WriteTable(stdout, runs[0])
		if jerr := writeJSON(c.jsonOut, runs, append([]string{"boot"}, args...)); jerr != nil {
			return fail(stderr, "%v", jerr)
		}
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}

func cmdCompare(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("compare", pflag.ContinueOnError)
	var c common
	c.register(fs, 20)
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		// Saved runs: every run of every file, side by side.
		var runs []*bench.Run
		for _, path := range fs.Args() {
			res, err := readResults(path)
			if err != nil {
				return fail(stderr, "%v", err)
			}
			runs = append(runs, res.Runs...)
		}
		rows := bench.StageNames()
		if len(runs) > 0 && runs[0].Stage("first-answer") != nil {
			// Saved by voltbench restore: its own rows.
			rows = bench.RestoreStageNames()
		}
		if err := bench.WriteCompareRows(stdout, rows, runs...); err != nil {
			return fail(stderr, "%v", err)
		}
		return exitOK
	}
	var arms []bench.Arm
	for _, vmm := range []string{bench.VMMVolt, bench.VMMQEMU} {
		cfg, err := c.config(vmm)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		// --vmm-arg is volt-vmm's; QEMU would not understand it.
		if vmm == bench.VMMQEMU {
			cfg.ExtraArgs = nil
		}
		arms = append(arms, bench.Arm{Name: vmm, Config: cfg})
	}
	runs, err := c.session(ctx, arms, stderr)
	if len(runs) == len(arms) {
		bench.WriteCompare(stdout, runs...)
		if jerr := writeJSON(c.jsonOut, runs, append([]string{"compare"}, args...)); jerr != nil {
			return fail(stderr, "%v", jerr)
		}
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}

func readResults(path string) (*bench.Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	res, err := bench.ParseResults(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

func cmdGate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("gate", pflag.ContinueOnError)
	var c common
	c.register(fs, 20)
	var (
		baseline  = fs.String("baseline", "ci/boot-baseline.json", "baseline results (voltbench boot --json)")
		candidate = fs.String("candidate", "", "judge these saved results instead of booting")
		abBin     = fs.String("ab-vmm-bin", "", "baseline volt-vmm binary to boot interleaved with the candidate (same-run A/B, preferred over the file)")
		tol       = bench.DefaultTolerance()
		ftol      = bench.FileTolerance()
	)
	fs.Float64Var(&tol.Alpha, "alpha", tol.Alpha, "family-wise significance level, shared by all stage tests")
	fs.Float64Var(&tol.RelFloor, "rel-floor", tol.RelFloor, "same-run A/B: ignore slowdowns under this fraction of the baseline")
	fs.Float64Var(&tol.AbsFloorUS, "abs-floor-us", tol.AbsFloorUS, "same-run A/B: ignore slowdowns under this many µs")
	fs.Float64Var(&ftol.RelFloor, "file-rel-floor", ftol.RelFloor, "against the baseline file (another session): ignore slowdowns under this fraction")
	fs.Float64Var(&ftol.AbsFloorUS, "file-abs-floor-us", ftol.AbsFloorUS, "against the baseline file: ignore slowdowns under this many µs")
	fs.IntVar(&tol.Permutations, "permutations", tol.Permutations, "Monte Carlo permutations per test")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	ftol.Alpha, ftol.Permutations = tol.Alpha, tol.Permutations
	for _, t := range []bench.Tolerance{tol, ftol} {
		if err := t.Validate(); err != nil {
			fmt.Fprintf(stderr, "voltbench gate: %v\n", err)
			return exitUsage
		}
	}
	baseRes, err := readResults(*baseline)
	if err != nil {
		return fail(stderr, "baseline: %v", err)
	}
	base := baseRes.Run(c.vmm)
	if base == nil {
		return fail(stderr, "baseline %s has no %s run", *baseline, c.vmm)
	}

	var cand, abBase *bench.Run
	switch {
	case *candidate != "":
		res, err := readResults(*candidate)
		if err != nil {
			return fail(stderr, "candidate: %v", err)
		}
		if cand = res.Run(c.vmm); cand == nil {
			return fail(stderr, "candidate %s has no %s run", *candidate, c.vmm)
		}
	default:
		cfg, err := c.config(c.vmm)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		arms := []bench.Arm{{Name: c.vmm, Config: cfg}}
		if *abBin != "" {
			bcfg := cfg
			bcfg.VMMBin = *abBin
			// The baseline binary gets no test flags: it is the reference.
			bcfg.ExtraArgs = nil
			arms = append([]bench.Arm{{Name: c.vmm + "-base", Config: bcfg}}, arms...)
		}
		runs, err := c.session(ctx, arms, stderr)
		if err != nil && !errors.Is(err, bench.ErrTooManyFailures) {
			return fail(stderr, "%v", err)
		}
		cand = runs[len(runs)-1]
		if len(runs) == 2 {
			abBase = runs[0]
		}
		if jerr := writeJSON(c.jsonOut, runs, append([]string{"gate"}, args...)); jerr != nil {
			return fail(stderr, "%v", jerr)
		}
	}
	if base.Guest != cand.Guest {
		fmt.Fprintf(stderr, "voltbench gate: warning: baseline guest %q, candidate guest %q\n", base.Guest, cand.Guest)
	}
	judge := func(b *bench.Run, label string, tol bench.Tolerance) (bench.GateResult, int) {
		g, err := bench.Gate(b, cand, tol)
		if err != nil {
			return g, fail(stderr, "%s: %v", label, err)
		}
		fmt.Fprintf(stdout, "== %s\n", label)
		bench.WriteGate(stdout, g)
		return g, exitOK
	}
	if abBase != nil {
		// Same-run A/B decides: both sides saw the same machine minute.
		// The file comparison is printed for the record only.
		if _, code := judge(base, "against "+*baseline+" (information only; the A/B run decides)", ftol); code != exitOK {
			fmt.Fprintln(stderr, "voltbench gate: file comparison skipped")
		}
		g, code := judge(abBase, "same-run A/B against "+*abBin, tol)
		if code != exitOK {
			return code
		}
		if g.Failed {
			return exitRegressed
		}
		return exitOK
	}
	g, code := judge(base, "against "+*baseline, ftol)
	if code != exitOK {
		return code
	}
	if g.Failed {
		return exitRegressed
	}
	return exitOK
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	var c common
	c.register(fs, 1)
	interval := fs.Duration("interval", 10*time.Second, "pause between boots")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if c.metricsAddr == "" {
		c.metricsAddr = "127.0.0.1:9464"
	}
	cfg, err := c.config(c.vmm)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	runner, err := bench.NewRunner()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer runner.Close()
	m := bench.NewMetrics()
	stop, err := serveMetrics(c.metricsAddr, m, stderr)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer stop()
	for {
		b := runner.Boot(ctx, cfg)
		if ctx.Err() != nil {
			return exitOK
		}
		m.Observe(c.vmm, b)
		if b.Err != nil {
			fmt.Fprintf(stderr, "voltbench: boot failed: %v\n", b.Err)
		}
		select {
		case <-ctx.Done():
			return exitOK
		case <-time.After(*interval):
		}
	}
}
