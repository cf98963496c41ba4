package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/report"
)

// snapshotFlags are the flags of the commands that restore a snapshot.
type snapshotFlags struct {
	vmmBin, kernel, memory string
	cpus, n                int
	timeout                time.Duration
	touch                  int
	dir                    string
	prepare                time.Duration
}

func (s *snapshotFlags) register(fs *pflag.FlagSet, defaultN int, what string) {
	fs.StringVar(&s.vmmBin, "vmm-bin", "", "volt-vmm binary (default: "+bench.DefaultVMMBin+" in the repository)")
	fs.StringVar(&s.kernel, "kernel", "", "probe guest (default: "+bench.DefaultProbe+")")
	fs.StringVar(&s.memory, "memory", "128M", "guest memory")
	fs.IntVar(&s.cpus, "cpus", 1, "vCPUs")
	fs.IntVarP(&s.n, "count", "n", defaultN, what)
	fs.DurationVar(&s.timeout, "timeout", 10*time.Second, "per-VM limit; the VMM is killed after it")
	fs.IntVar(&s.touch, "touch", 0, "4 KiB pages the probe writes before the snapshot, so that memory has content")
	fs.StringVar(&s.dir, "dir", os.TempDir(), "where the temporary snapshot directory is made (a disk, so the memory file's blocks mean something)")
	fs.DurationVar(&s.prepare, "prepare-timeout", 30*time.Second, "limit for booting, touching and snapshotting the probe")
}

// snapshotProbe resolves the probe's boot configuration, boots it once,
// snapshots it into a new directory under --dir and describes the
// snapshot; cleanup removes it.
func (s *snapshotFlags) snapshotProbe(ctx context.Context, stdout io.Writer) (bench.Config, *bench.Snapshot, func(), error) {
	cfg, err := bench.Resolve(ctx, bench.Config{
		VMM: bench.VMMVolt, VMMBin: s.vmmBin, Guest: bench.GuestProbe, Kernel: s.kernel,
		Memory: s.memory, CPUs: s.cpus, Timeout: s.timeout,
	}, "")
	if err != nil {
		return cfg, nil, nil, err
	}
	dir, err := os.MkdirTemp(s.dir, "voltbench-snapshot-")
	if err != nil {
		return cfg, nil, nil, fmt.Errorf("snapshot directory: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir) }
	snap, err := bench.PrepareSnapshot(ctx, bench.SnapshotSpec{
		VMMBin: cfg.VMMBin, Kernel: cfg.Kernel, Memory: cfg.Memory, CPUs: cfg.CPUs,
		TouchPages: s.touch, Dir: dir, Timeout: s.prepare,
	})
	if err != nil {
		cleanup()
		return cfg, nil, nil, err
	}
	fmt.Fprintf(stdout, "snapshot: probe, %s, %d vCPU, %d pages touched; memory file %d bytes, %d KiB on disk; prepared in %v\n",
		snap.Memory, snap.CPUs, snap.TouchPages, snap.MemFileBytes, snap.MemFileAllocated>>10, snap.Took.Round(time.Millisecond))
	return cfg, snap, cleanup, nil
}

func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("restore", pflag.ContinueOnError)
	var (
		s    snapshotFlags
		sess session
		f    floorFlags
	)
	s.register(fs, 100, "restores (and, with --compare-boot, as many cold boots; with --floor, as many floor runs each)")
	compareBoot := fs.Bool("compare-boot", true, "also cold-boot the same probe, interleaved, and print restore against cold boot")
	concurrency := fs.IntSlice("concurrency", nil, "after the latency run, restores per second with this many in flight at once, e.g. 1,2,8 (each its own volt-vmm on the same snapshot)")
	concurrencyN := fs.Int("concurrency-n", 200, "restores per --concurrency level, in 4 rounds that alternate the levels")
	fs.StringVar(&sess.jsonOut, "json", "", "write the results, with encoded HDR histograms, to this file")
	fs.StringVar(&sess.metricsAddr, "metrics-listen", "", "serve Prometheus metrics on this address while running")
	fs.BoolVar(&sess.progress, "progress", false, "draw a progress bar on stderr even when it is not a terminal")
	fs.BoolVar(&sess.noProgress, "no-progress", false, "never draw a progress bar")
	f.register(fs, true)
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "restore", "unexpected argument %q", fs.Arg(0))
	}
	if s.touch < 0 {
		return usage(stderr, "restore", "--touch %d: want 0 or more pages", s.touch)
	}
	if s.n < 1 {
		return usage(stderr, "restore", "-n %d: want at least one restore", s.n)
	}
	if len(*concurrency) > 0 {
		if err := bench.ValidateThroughput(*concurrency, *concurrencyN, bench.ThroughputRounds); err != nil {
			return usage(stderr, "restore", "--concurrency %v, --concurrency-n %d: %v", *concurrency, *concurrencyN, err)
		}
	}
	sess.n, sess.timeout = s.n, s.timeout
	dir, err := f.dir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	cfg, snap, cleanup, err := s.snapshotProbe(ctx, stdout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	arms, err := bench.RestoreArms(cfg, snap, *compareBoot, dir)
	if err != nil {
		return fail(stderr, "%v (or --floor=false)", err)
	}
	runner, err := newRunner()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer runner.Close()
	spans := &bench.SpanRecorder{Spans: bench.RestoreSpans}
	runs, err := sess.planWith(ctx, runner, arms, stderr, spans.Observe)
	if len(runs) != len(arms) {
		return fail(stderr, "%v", err)
	}
	floors := bench.Floors(arms, runs)
	vmms := nonFloor(runs)
	restore := vmms[len(vmms)-1]
	report.WriteTable(stdout, restore, floors[restore.VMM])
	if *compareBoot {
		fmt.Fprintln(stdout)
		report.WriteTable(stdout, vmms[0], floors[vmms[0].VMM])
		fmt.Fprintf(stdout, "\npeer: cold boot of the same probe under the same volt-vmm, %s, %d vCPU, interleaved with the restores and driven the same way\n"+
			"(%q queued on the console at exec, answer awaited, then poweroff); first-answer is that reply in both\n",
			cfg.Memory, cfg.CPUs, bench.RestoreAsk)
		report.WriteCompare(stdout, bench.RestoreStageNames(), vmms, floors)
	}
	fmt.Fprintln(stdout)
	names := make([]string, len(vmms))
	for i, r := range vmms {
		names[i] = r.VMM
	}
	spans.Write(stdout, names...)
	title := fmt.Sprintf("voltbench restore: probe, %s, %d vCPU, %d pages touched", snap.Memory, snap.CPUs, snap.TouchPages)
	if serr := save(sess.jsonOut, f.plot, title, bench.RestoreStageNames(), runs, append([]string{"restore"}, args...)); serr != nil {
		return fail(stderr, "%v", serr)
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if len(*concurrency) == 0 {
		return exitOK
	}
	spec := bench.ThroughputSpec{
		Config: bench.RestoreConfig(cfg, snap), Levels: *concurrency, N: *concurrencyN, Rounds: bench.ThroughputRounds, Progress: sess.progressBar(stderr),
	}
	if dir != "" {
		fa, err := bench.KVMAnswerFloorArm(dir, snap.Memory, s.timeout)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		spec.Floor = &fa.Config
	}
	levels, err := runner.RunThroughput(ctx, spec)
	fmt.Fprintln(stdout)
	bench.WriteThroughput(stdout, levels)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	for _, l := range levels {
		if l.Failures > 0 {
			return fail(stderr, "%d of %d restores with %d in flight failed", l.Failures, l.Restores, l.Concurrency)
		}
		if l.Floor != nil && l.Floor.Failures > 0 {
			return fail(stderr, "%d of %d floor runs with %d in flight failed", l.Floor.Failures, l.Floor.Restores, l.Concurrency)
		}
	}
	return exitOK
}

func cmdClones(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("clones", pflag.ContinueOnError)
	var s snapshotFlags
	s.register(fs, 20, "clones running at once")
	readBack := fs.Bool("read-back", true, "have every clone read the touched pages (sum), so they are mapped in it, and check them")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "clones", "unexpected argument %q", fs.Arg(0))
	}
	if s.n < 1 || s.touch < 0 {
		return usage(stderr, "clones", "-n %d --touch %d: want at least one clone and 0 or more pages", s.n, s.touch)
	}
	cfg, snap, cleanup, err := s.snapshotProbe(ctx, stdout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	rep, err := bench.RunClones(ctx, bench.CloneSpec{
		VMMBin: cfg.VMMBin, Snapshot: snap, N: s.n, ReadBack: *readBack,
		// Clones start together on a shared machine: give each its own
		// time plus the whole batch's start-up.
		Timeout: s.timeout + time.Duration(s.n)*time.Second,
	})
	if rep != nil && len(rep.Clones) > 0 && rep.Clones[0].PID != 0 {
		bench.WriteClones(stdout, rep)
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}
