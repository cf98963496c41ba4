// Command voltbench boots guests under KVM many times and times every stage
// from the exec of the VMM to the guest's PID 1 and exit, from the kernel's
// side with eBPF, so the same measurement applies to any VMM, and to the
// floor helpers that show this machine's limit.
//
//	voltbench [boot]   boot the probe guest N times under volt-vmm, print the table
//	voltbench compare  the same boots under volt-vmm and QEMU, side by side
//	voltbench gate     fail when a stage regressed against a baseline
//	voltbench serve    boot periodically and export Prometheus metrics
//	voltbench restore  restore a snapshot of the probe N times, against cold boots
//	voltbench clones   run N clones of two snapshots at once, memory from a CAS, files or private copies
//	voltbench dedup    ten snapshots of one template in a CAS store at three chunk sizes
//	voltbench floor    this machine's floor: empty processes and a minimal KVM guest
//	voltbench pool     acquire → agent answer → release through voltpool, against cold paths
//
// It needs root (eBPF, tracefs) and /dev/kvm. This file holds flag parsing
// and wiring only; package bench and its sub-packages do the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/gate"
	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/stats"
	"github.com/voltvmm/volt/bench/trace"
)

// Exit statuses.
const (
	exitOK        = 0
	exitRegressed = 1 // gate: a stage regressed
	exitUsage     = 2
	exitError     = 3 // could not boot, trace or judge
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

const usageText = `Usage: voltbench [boot|compare|gate|serve|restore|clones|dedup|floor|pool] [flags]

  boot      boot the guest -n times under --vmm, interleaved with the KVM floor helper,
            and print p50/p90/max (p99 from 100 boots) per stage with its distance to the floor (default);
            --jail also boots it through volt-jailer, interleaved: jailed against unjailed, the jailer's cost
  compare   boot under volt-vmm and QEMU (and the floor), interleaved, and print them side by side;
            or: compare A.json [B.json] to compare saved runs
  gate      compare a fresh run (or --candidate FILE) with --baseline FILE; exit 1 on a regression
  serve     boot every --interval and serve Prometheus metrics on --metrics-listen
  restore   snapshot the probe once, restore it -n times (interleaved with as many cold
            boots, --compare-boot, and their floors) and print both per stage;
            --concurrency 1,2,8 adds restores per second with that many in flight;
            --from cas|both restores from a CAS store too (--chunk-size 2M,256K,64K);
            --jail restores through volt-jailer too; --ab-vmm-bin B restores with a baseline volt-vmm too
  clones    restore -n clones of two snapshots of one template at once, their memory from a
            CAS store, from memory files, or private copies, and print their PSS side by side
  dedup     take ten snapshots of one template after different work and store them in a CAS
            store at 2M, 256K and 64K chunks: stored bytes against one snapshot's
  pool      acquire a VM from voltpool, ask its guest agent over vsock, release it, with 1, 8 and
            64 callers, against the cold-restore path and a cold boot (HDR p50/p99 per stage, PSS);
            --guest linux --guest-profile nested-pvm for our Linux and volt-init's agent
  floor     run the floor helpers (bench/floor) -n times each: exec → exit of empty static
            Go and C binaries, and a minimal KVM set-up with a guest of a few instructions

--plot FILE.svg (boot, compare, restore, floor) draws each stage's latency CDF, floor marked.
Stages are timed from the exec with eBPF (root and /dev/kvm needed).
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
	case "dedup":
		return cmdDedup(ctx, args, stdout, stderr)
	case "floor":
		return cmdFloor(ctx, args, stdout, stderr)
	case "pool":
		return cmdPool(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	fmt.Fprintf(stderr, "voltbench: unknown command %q\n%s", cmd, usageText)
	return exitUsage
}

// session holds the flags of every command that runs boots under the
// tracer: how many, and what to do with the results.
type session struct {
	n                    int
	timeout              time.Duration
	jsonOut, metricsAddr string
	progress, noProgress bool
}

func (s *session) register(fs *pflag.FlagSet, defaultN int, what string) {
	fs.IntVarP(&s.n, "boots", "n", defaultN, what)
	fs.DurationVar(&s.timeout, "timeout", 10*time.Second, "per-boot limit; the VMM is killed and the boot counted as failed after it")
	fs.StringVar(&s.jsonOut, "json", "", "write the results, with encoded HDR histograms, to this file")
	fs.StringVar(&s.metricsAddr, "metrics-listen", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while running")
	fs.BoolVar(&s.progress, "progress", false, "draw a progress bar on stderr even when it is not a terminal")
	fs.BoolVar(&s.noProgress, "no-progress", false, "never draw a progress bar")
}

// guestFlags say which guest to boot under which VMM.
type guestFlags struct {
	vmm, vmmBin, qemuBin, guest string
	kernel, initrd, cmdline     string
	memory, guestProfile        string
	cpus                        int
	vmmArgs                     []string
}

func (g *guestFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.vmm, "vmm", bench.VMMVolt, "VMM to boot: volt or qemu")
	fs.StringVar(&g.vmmBin, "vmm-bin", "", "volt-vmm binary (default: "+bench.DefaultVMMBin+" in the repository)")
	fs.StringVar(&g.qemuBin, "qemu-bin", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&g.guest, "guest", bench.GuestProbe, "guest: probe ("+bench.DefaultProbe+") or linux ("+bench.DefaultLinuxKernel+" + initramfs.cpio)")
	fs.StringVar(&g.kernel, "kernel", "", "guest kernel (default: by --guest, under build/guest)")
	fs.StringVar(&g.initrd, "initrd", "", "initramfs for --guest linux (default: "+bench.DefaultLinuxInitrd+")")
	fs.StringVar(&g.cmdline, "cmdline", bench.DefaultLinuxCmdline, "kernel command line for --guest linux")
	fs.StringVar(&g.memory, "memory", "128M", "guest memory")
	fs.IntVar(&g.cpus, "cpus", 1, "vCPUs")
	fs.StringVar(&g.guestProfile, "guest-profile", "", "passed to volt-vmm as --guest-profile: how it configures the guest for a kind of host (e.g. nested-pvm for Linux on nested, software-assisted KVM)")
	fs.StringArrayVar(&g.vmmArgs, "vmm-arg", nil, "extra argument for volt-vmm (repeatable), e.g. --vmm-arg=--test-marker-delay=5ms")
}

// config resolves the boot configuration of one VMM kind: defaults from
// the repository, files checked.
func (g *guestFlags) config(ctx context.Context, vmm string, timeout time.Duration) (bench.Config, error) {
	cfg := bench.Config{
		VMM: vmm, VMMBin: g.vmmBin, Guest: g.guest, Kernel: g.kernel, Initrd: g.initrd,
		Memory: g.memory, CPUs: g.cpus, GuestProfile: g.guestProfile, ExtraArgs: g.vmmArgs, Timeout: timeout,
	}
	if g.guest == bench.GuestLinux {
		cfg.Cmdline = g.cmdline
	}
	if vmm == bench.VMMQEMU {
		// --vmm-arg and --guest-profile are volt-vmm's.
		cfg.VMMBin, cfg.ExtraArgs, cfg.GuestProfile = "", nil, ""
	}
	return bench.Resolve(ctx, cfg, g.qemuBin)
}

// floorFlags say whether and where the floor helpers run beside the boots.
type floorFlags struct {
	floor    bool
	floorDir string
	plot     string
}

func (f *floorFlags) register(fs *pflag.FlagSet, floorFlag bool) {
	if floorFlag {
		fs.BoolVar(&f.floor, "floor", true, "run the KVM floor helper interleaved with the boots, and print each stage's distance to it")
	}
	fs.StringVar(&f.floorDir, "floor-dir", "", "directory of the floor helpers (default: "+bench.DefaultFloorDir+" in the repository; build them with bench/floor/build.sh DIR)")
	fs.StringVar(&f.plot, "plot", "", "draw each stage's latency CDF, floor marked, into this SVG file")
}

// dir is the floor directory when the floor is on, "" when it is off.
func (f *floorFlags) dir() (string, error) {
	if !f.floor {
		return "", nil
	}
	return bench.FloorDir(f.floorDir)
}

func (s *session) progressBar(stderr io.Writer) *bench.Progress {
	if s.noProgress {
		return nil
	}
	if s.progress || isTerminal(stderr) {
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

func newRunner() (*bench.Runner, error) {
	runner, err := bench.NewRunner()
	if errors.Is(err, trace.ErrUnsupported) {
		return nil, fmt.Errorf("%w (voltbench needs root, BTF and tracefs)", err)
	}
	return runner, err
}

// serveMetrics starts the metrics server when --metrics-listen asks; the
// returned function stops it.
func (s *session) serveMetrics(m *bench.Metrics, stderr io.Writer) (func(), error) {
	addr, stop, err := m.Serve(s.metricsAddr, func(format string, args ...any) {
		fmt.Fprintf(stderr, "voltbench: "+format+"\n", args...)
	})
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	fmt.Fprintf(stderr, "voltbench: metrics on http://%s/metrics\n", addr)
	return stop, nil
}

// plan loads the tracer, optionally serves metrics, and runs the arms;
// observers see every boot.
func (s *session) plan(ctx context.Context, arms []bench.Arm, stderr io.Writer, observers ...func(bench.Arm, bench.Boot)) ([]*results.Run, error) {
	runner, err := newRunner()
	if err != nil {
		return nil, err
	}
	defer runner.Close()
	return s.planWith(ctx, runner, arms, stderr, observers...)
}

func (s *session) planWith(ctx context.Context, runner *bench.Runner, arms []bench.Arm, stderr io.Writer, observers ...func(bench.Arm, bench.Boot)) ([]*results.Run, error) {
	plan := bench.Plan{Arms: arms, N: s.n, Progress: s.progressBar(stderr), Log: stderr}
	if s.metricsAddr != "" {
		m := bench.NewMetrics()
		stop, err := s.serveMetrics(m, stderr)
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

// save writes --json and --plot, as asked. The plot leaves out the runs
// named in notPlotted (a jailed arm, timed from another exec than the
// rest: its VMM run stands for it there).
func save(jsonOut, plot, title string, rows []string, runs []*results.Run, command []string, notPlotted ...string) error {
	if jsonOut != "" {
		if err := bench.WriteResults(jsonOut, runs, append([]string{"voltbench"}, command...)); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	if plot != "" {
		var plotted []*results.Run
		for _, r := range runs {
			if !slices.Contains(notPlotted, r.VMM) {
				plotted = append(plotted, r)
			}
		}
		if err := bench.WritePlot(plot, title, rows, plotted); err != nil {
			return fmt.Errorf("--plot: %w", err)
		}
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

func usage(stderr io.Writer, cmd, format string, args ...any) int {
	fmt.Fprintf(stderr, "voltbench %s: %s\n", cmd, fmt.Sprintf(format, args...))
	return exitUsage
}

func fail(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "voltbench: "+format+"\n", args...)
	return exitError
}

// describe is the title of a plot of boots of cfg.
func describe(what string, cfg bench.Config) string {
	return fmt.Sprintf("voltbench %s: guest %s, %s, %d vCPU", what, cfg.Guest, cfg.Memory, cfg.CPUs)
}

// nonFloor returns the runs that are not floors.
func nonFloor(runs []*results.Run) []*results.Run {
	var out []*results.Run
	for _, r := range runs {
		if !r.Floor {
			out = append(out, r)
		}
	}
	return out
}

func cmdBoot(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("boot", pflag.ContinueOnError)
	var (
		s session
		g guestFlags
		f floorFlags
		j jailFlags
	)
	s.register(fs, 20, "boots (and as many floor runs; with --jail, as many jailed boots)")
	g.register(fs)
	f.register(fs, true)
	j.register(fs, "boot")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "boot", "unexpected argument %q", fs.Arg(0))
	}
	if err := j.check(fs); err != nil {
		return usage(stderr, "boot", "%v", err)
	}
	cfg, err := g.config(ctx, g.vmm, s.timeout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	arms := []bench.Arm{{Name: g.vmm, Config: cfg}}
	var jailed *bench.JailVMMRun
	spans := &bench.SpanRecorder{Spans: bench.JailSpans}
	if j.jail {
		ja, cleanup, err := j.arm(arms[0])
		if err != nil {
			return fail(stderr, "%v", err)
		}
		defer cleanup()
		arms = append(arms, ja)
	}
	dir, err := f.dir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if dir != "" {
		if arms, err = bench.WithKVMFloor(arms, dir, g.memory, bench.Stages, s.timeout); err != nil {
			return fail(stderr, "%v (or --floor=false)", err)
		}
	}
	var observers []func(bench.Arm, bench.Boot)
	if j.jail {
		jailed = bench.NewJailVMMRun(arms[len(arms)-1])
		observers = append(observers, jailed.Observe, spans.Observe)
	}
	runs, err := s.plan(ctx, arms, stderr, observers...)
	if len(runs) == len(arms) {
		floors := bench.Floors(arms, runs)
		all := runs
		if jailed != nil {
			floors[jailed.Run.VMM] = floors[arms[len(arms)-1].Name]
			all = append(append([]*results.Run{}, runs...), jailed.Run)
		}
		for _, r := range nonFloor(all) {
			if jailed != nil && r.VMM == arms[len(arms)-1].Name {
				// Timed from the exec of volt-jailer: shown in the
				// comparison, whose legend says so.
				continue
			}
			report.WriteTable(stdout, r, floors[r.VMM])
		}
		var notPlotted []string
		if jailed != nil {
			ja := arms[len(arms)-1]
			writeJail(stdout, runNamed(runs, g.vmm), runNamed(runs, ja.Name), jailed, spans, ja)
			notPlotted = append(notPlotted, ja.Name)
		}
		if serr := save(s.jsonOut, f.plot, describe("boot", cfg), bench.StageNames(), all, append([]string{"boot"}, args...), notPlotted...); serr != nil {
			return fail(stderr, "%v", serr)
		}
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}

func cmdCompare(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("compare", pflag.ContinueOnError)
	var (
		s session
		g guestFlags
		f floorFlags
	)
	s.register(fs, 20, "boots per VMM (and as many floor runs)")
	g.register(fs)
	f.register(fs, true)
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return compareFiles(fs.Args(), f.plot, stdout, stderr)
	}
	var arms []bench.Arm
	for _, vmm := range []string{bench.VMMVolt, bench.VMMQEMU} {
		cfg, err := g.config(ctx, vmm, s.timeout)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		arms = append(arms, bench.Arm{Name: vmm, Config: cfg})
	}
	dir, err := f.dir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if dir != "" {
		if arms, err = bench.WithKVMFloor(arms, dir, g.memory, bench.Stages, s.timeout); err != nil {
			return fail(stderr, "%v (or --floor=false)", err)
		}
	}
	runs, err := s.plan(ctx, arms, stderr)
	if len(runs) == len(arms) {
		report.WriteCompare(stdout, bench.StageNames(), nonFloor(runs), bench.Floors(arms, runs))
		if serr := save(s.jsonOut, f.plot, describe("compare", arms[len(arms)-1].Config), bench.StageNames(), runs, append([]string{"compare"}, args...)); serr != nil {
			return fail(stderr, "%v", serr)
		}
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}

// compareFiles shows every run of every saved file side by side, with the
// floors the files hold.
func compareFiles(paths []string, plot string, stdout, stderr io.Writer) int {
	var runs []*results.Run
	floors := report.Floors{}
	for _, path := range paths {
		res, err := bench.ReadResults(path)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		runs = append(runs, res.Runs...)
		for name, fl := range res.Floors() {
			floors[name] = fl
		}
	}
	vmms := nonFloor(runs)
	if len(vmms) == 0 {
		return fail(stderr, "compare: no run other than floors in %s", strings.Join(paths, ", "))
	}
	rows := bench.StageNames()
	if vmms[0].Stage("first-answer") != nil {
		// Saved by voltbench restore: its own rows.
		rows = bench.RestoreStageNames()
	}
	if len(vmms) == 1 {
		report.WriteTable(stdout, vmms[0], floors[vmms[0].VMM])
	} else if err := report.WriteCompare(stdout, rows, vmms, floors); err != nil {
		return fail(stderr, "%v", err)
	}
	if plot != "" {
		if err := bench.WritePlot(plot, "voltbench compare: "+strings.Join(paths, ", "), rows, runs); err != nil {
			return fail(stderr, "--plot: %v", err)
		}
	}
	return exitOK
}

func cmdGate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("gate", pflag.ContinueOnError)
	var (
		s session
		g guestFlags
	)
	s.register(fs, 20, "boots of the candidate (and of --ab-vmm-bin)")
	g.register(fs)
	var (
		baseline  = fs.String("baseline", "ci/boot-baseline.json", "baseline results (voltbench boot --json)")
		candidate = fs.String("candidate", "", "judge these saved results instead of booting")
		abBin     = fs.String("ab-vmm-bin", "", "baseline volt-vmm binary to boot interleaved with the candidate (same-run A/B, preferred over the file)")
		tol       = stats.DefaultTolerance()
		ftol      = stats.FileTolerance()
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
	if fs.NArg() > 0 {
		return usage(stderr, "gate", "unexpected argument %q", fs.Arg(0))
	}
	ftol.Alpha, ftol.Permutations = tol.Alpha, tol.Permutations
	for _, t := range []stats.Tolerance{tol, ftol} {
		if err := t.Validate(); err != nil {
			return usage(stderr, "gate", "%v", err)
		}
	}
	baseRes, err := bench.ReadResults(*baseline)
	if err != nil {
		return fail(stderr, "baseline: %v", err)
	}
	in := gate.Inputs{File: baseRes.Run(g.vmm), FileName: *baseline, FileTol: ftol, ABTol: tol, Gated: bench.GatedStageNames()}
	if in.File == nil {
		return fail(stderr, "baseline %s has no %s run", *baseline, g.vmm)
	}
	switch {
	case *candidate != "":
		res, err := bench.ReadResults(*candidate)
		if err != nil {
			return fail(stderr, "candidate: %v", err)
		}
		if in.Cand = res.Run(g.vmm); in.Cand == nil {
			return fail(stderr, "candidate %s has no %s run", *candidate, g.vmm)
		}
	default:
		cfg, err := g.config(ctx, g.vmm, s.timeout)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		arms := []bench.Arm{{Name: g.vmm, Config: cfg}}
		if *abBin != "" {
			bcfg := cfg
			bcfg.VMMBin = *abBin
			// The baseline binary gets no test flags: it is the reference.
			bcfg.ExtraArgs = nil
			arms = append([]bench.Arm{{Name: g.vmm + "-base", Config: bcfg}}, arms...)
		}
		runs, err := s.plan(ctx, arms, stderr)
		if err != nil && !errors.Is(err, bench.ErrTooManyFailures) {
			return fail(stderr, "%v", err)
		}
		in.Cand = runs[len(runs)-1]
		if len(runs) == 2 {
			in.AB, in.ABName = runs[0], *abBin
		}
		if serr := save(s.jsonOut, "", "", nil, runs, append([]string{"gate"}, args...)); serr != nil {
			return fail(stderr, "%v", serr)
		}
	}
	if in.File.Guest != in.Cand.Guest {
		fmt.Fprintf(stderr, "voltbench gate: warning: baseline guest %q, candidate guest %q\n", in.File.Guest, in.Cand.Guest)
	}
	d, err := gate.Decide(in)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	d.Write(stdout)
	if d.Failed {
		return exitRegressed
	}
	return exitOK
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	var (
		s session
		g guestFlags
	)
	s.register(fs, 1, "unused: serve boots until stopped")
	g.register(fs)
	interval := fs.Duration("interval", 10*time.Second, "pause between boots")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "serve", "unexpected argument %q", fs.Arg(0))
	}
	if *interval < 0 {
		return usage(stderr, "serve", "--interval %v: want 0 or more", *interval)
	}
	if s.metricsAddr == "" {
		s.metricsAddr = "127.0.0.1:9464"
	}
	cfg, err := g.config(ctx, g.vmm, s.timeout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	runner, err := newRunner()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer runner.Close()
	m := bench.NewMetrics()
	stop, err := s.serveMetrics(m, stderr)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer stop()
	for {
		b := runner.Boot(ctx, cfg)
		if ctx.Err() != nil {
			return exitOK
		}
		m.Observe(g.vmm, b)
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

func cmdFloor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("floor", pflag.ContinueOnError)
	var (
		s session
		f floorFlags
	)
	s.register(fs, 20, "runs of each floor helper")
	f.register(fs, false)
	memory := fs.String("memory", "128M", "guest memory of the KVM floor's one slot")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "floor", "unexpected argument %q", fs.Arg(0))
	}
	if _, err := bench.MemoryMiB(*memory); err != nil {
		return usage(stderr, "floor", "--memory: %v", err)
	}
	dir, err := bench.FloorDir(f.floorDir)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	arms, err := bench.ExecFloorArms(dir, s.timeout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	kvm, err := bench.KVMFloorArm(dir, *memory, bench.Stages, s.timeout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	answer, err := bench.KVMAnswerFloorArm(dir, *memory, s.timeout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	arms = append(arms, kvm, answer)
	runs, err := s.plan(ctx, arms, stderr)
	if len(runs) == len(arms) {
		report.WriteFloors(stdout, runs...)
		for _, r := range runs {
			fmt.Fprintln(stdout)
			report.WriteTable(stdout, r, nil)
		}
		rows := append(bench.StageNames(), "first-answer")
		if serr := save(s.jsonOut, f.plot, "voltbench floor: this machine's floor ("+*memory+" of guest memory)", rows, runs, append([]string{"floor"}, args...)); serr != nil {
			return fail(stderr, "%v", serr)
		}
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}
