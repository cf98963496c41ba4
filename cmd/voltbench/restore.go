package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/bench"
)

// snapshotFlags are the flags of the commands that restore a snapshot.
type snapshotFlags struct {
	common
	touch   int
	dir     string
	prepare time.Duration
}

func (s *snapshotFlags) register(fs *pflag.FlagSet, defaultN int, what string) {
	c := &s.common
	c.vmm, c.guest = bench.VMMVolt, bench.GuestProbe
	fs.StringVar(&c.vmmBin, "vmm-bin", "", "volt-vmm binary (default: bin/volt-vmm in the repository)")
	fs.StringVar(&c.kernel, "kernel", "", "probe guest (default: build/guest/probe.elf)")
	fs.StringVar(&c.memory, "memory", "128M", "guest memory")
	fs.IntVar(&c.cpus, "cpus", 1, "vCPUs")
	fs.IntVarP(&c.n, "count", "n", defaultN, what)
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "per-VM limit; the VMM is killed after it")
	fs.IntVar(&s.touch, "touch", 0, "4 KiB pages the probe writes before the snapshot, so that memory has content")
	fs.StringVar(&s.dir, "dir", os.TempDir(), "where the temporary snapshot directory is made (a disk, so the memory file's blocks mean something)")
	fs.DurationVar(&s.prepare, "prepare-timeout", 30*time.Second, "limit for booting, touching and snapshotting the probe")
}

// snapshot boots the probe and snapshots it into a new directory under
// --dir; the returned function removes it.
func (s *snapshotFlags) snapshot(ctx context.Context, cfg bench.Config) (*bench.Snapshot, func(), error) {
	dir, err := os.MkdirTemp(s.dir, "voltbench-snapshot-")
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot directory: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir) }
	snap, err := bench.PrepareSnapshot(ctx, bench.SnapshotSpec{
		VMMBin: cfg.VMMBin, Kernel: cfg.Kernel, Memory: cfg.Memory, CPUs: cfg.CPUs,
		TouchPages: s.touch, Dir: dir, Timeout: s.prepare,
	})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return snap, cleanup, nil
}

func describeSnapshot(w io.Writer, snap *bench.Snapshot) {
	fmt.Fprintf(w, "snapshot: probe, %s, %d vCPU, %d pages touched; memory file %d bytes, %d KiB on disk; prepared in %v\n",
		snap.Memory, snap.CPUs, snap.TouchPages, snap.MemFileBytes, snap.MemFileAllocated>>10, snap.Took.Round(time.Millisecond))
}

func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("restore", pflag.ContinueOnError)
	var s snapshotFlags
	s.register(fs, 100, "restores (and, with --compare-boot, as many cold boots)")
	compareBoot := fs.Bool("compare-boot", true, "also cold-boot the same probe, interleaved, and print restore against cold boot")
	fs.StringVar(&s.jsonOut, "json", "", "write the results, with encoded HDR histograms, to this file")
	fs.StringVar(&s.metricsAddr, "metrics-listen", "", "serve Prometheus metrics on this address while running")
	fs.BoolVar(&s.progress, "progress", false, "draw a progress bar on stderr even when it is not a terminal")
	fs.BoolVar(&s.noProgress, "no-progress", false, "never draw a progress bar")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "voltbench restore: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if s.touch < 0 {
		fmt.Fprintf(stderr, "voltbench restore: --touch %d: want 0 or more pages\n", s.touch)
		return exitUsage
	}
	cfg, snap, cleanup, err := s.snapshotProbe(ctx, stdout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	arms := bench.RestoreArms(cfg, snap, *compareBoot)
	spans := &bench.SpanRecorder{Spans: bench.RestoreSpans}
	runs, err := s.session(ctx, arms, stderr, spans.Observe)
	if len(runs) == len(arms) {
		names := make([]string, len(runs))
		for i, r := range runs {
			names[i] = r.VMM
		}
		restore := runs[len(runs)-1]
		bench.WriteTable(stdout, restore)
		if *compareBoot {
			fmt.Fprintln(stdout)
			bench.WriteTable(stdout, runs[0])
			fmt.Fprintf(stdout, "\npeer: cold boot of the same probe under the same volt-vmm, %s, %d vCPU, interleaved with the restores and driven the same way\n"+
				"(%q queued on the console at exec, answer awaited, then poweroff); first-answer is that reply in both\n",
				cfg.Memory, cfg.CPUs, bench.RestoreAsk)
			bench.WriteCompareRows(stdout, bench.RestoreStageNames(), runs...)
		}
		fmt.Fprintln(stdout)
		spans.Write(stdout, names...)
		if jerr := writeJSON(s.jsonOut, runs, append([]string{"restore"}, args...)); jerr != nil {
			return fail(stderr, "%v", jerr)
		}
	}
	if err != nil {
		return fail(stderr, "%v", err)
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
		fmt.Fprintf(stderr, "voltbench clones: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if s.n < 1 || s.touch < 0 {
		fmt.Fprintf(stderr, "voltbench clones: -n %d --touch %d: want at least one clone and 0 or more pages\n", s.n, s.touch)
		return exitUsage
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

// snapshotProbe boots the probe once, snapshots it as the flags ask and describes
// the snapshot; cleanup removes it.
func (s *snapshotFlags) snapshotProbe(ctx context.Context, stdout io.Writer) (bench.Config, *bench.Snapshot, func(), error) {
	cfg, err := s.config(bench.VMMVolt)
	if err != nil {
		return cfg, nil, nil, err
	}
	snap, cleanup, err := s.snapshot(ctx, cfg)
	if err != nil {
		return cfg, snap, nil, err
	}
	describeSnapshot(stdout, snap)
	return cfg, snap, cleanup, nil
}
