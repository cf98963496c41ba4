package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/bench"
)

func cmdDedup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("dedup", pflag.ContinueOnError)
	var s snapshotFlags
	s.register(fs, 0, 4096, "") // the snapshots are the works, not a count
	chunkSizes := fs.StringSlice("chunk-size", []string{"2M", "256K", "64K"}, "chunk sizes to store the snapshots at")
	works := fs.StringArray("work", nil, "one snapshot's work after the template's restore, probe commands separated by ';' (repeatable; default: ten built-in works, see bench/README.md)")
	voltBin := fs.String("volt-bin", "", "the volt CLI (default: "+bench.DefaultVoltBin+" in the repository)")
	noProgress := fs.Bool("no-progress", false, "never draw a progress bar")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "dedup", "unexpected argument %q", fs.Arg(0))
	}
	if s.touch < 0 {
		return usage(stderr, "dedup", "--touch %d: want 0 or more pages", s.touch)
	}
	var sizes []int64
	for _, c := range *chunkSizes {
		n, err := bench.ParseChunkSize(c)
		if err != nil {
			return usage(stderr, "dedup", "--chunk-size: %v", err)
		}
		sizes = append(sizes, n)
	}
	work := bench.DefaultDedupWorks(s.touch)
	if len(*works) > 0 {
		work = nil
		for _, w := range *works {
			var cmds []string
			for _, c := range strings.Split(w, ";") {
				if c = strings.TrimSpace(c); c != "" {
					cmds = append(cmds, c)
				}
			}
			work = append(work, cmds)
		}
	}
	spec := bench.DedupSpec{
		Memory: s.memory, CPUs: s.cpus, TemplateTouch: s.touch, Works: work, ChunkSizes: sizes, Timeout: s.prepare,
		VMMArgs: s.prepareArgs,
	}
	// Check what the flags decide before anything boots.
	spec.VMMBin, spec.Kernel, spec.VoltBin, spec.Dir = "-", "-", "-", "-"
	if err := spec.Validate(); err != nil {
		return usage(stderr, "dedup", "%v", err)
	}
	cfg, err := s.probeConfig(ctx)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if spec.VoltBin, err = bench.ResolveVoltBin(*voltBin); err != nil {
		return fail(stderr, "%v", err)
	}
	dir, cleanup, err := s.tempDir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	spec.VMMBin, spec.Kernel, spec.Dir = cfg.VMMBin, cfg.Kernel, dir
	if !*noProgress && isTerminal(stderr) {
		spec.Progress = bench.NewProgress(stderr)
	}
	fmt.Fprintf(stdout, "load average at start: %s\n", loadAvg())
	start := time.Now()
	rep, err := bench.RunDedup(ctx, spec)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	bench.WriteDedup(stdout, rep)
	fmt.Fprintf(stdout, "took %v; load average at end: %s\n", time.Since(start).Round(time.Second), loadAvg())
	return exitOK
}
