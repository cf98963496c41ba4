package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/results"
)

// snapshotFlags are the flags of the commands that restore a snapshot.
type snapshotFlags struct {
	vmmBin, kernel, memory string
	cpus, n                int
	timeout                time.Duration
	touch                  int
	dir                    string
	prepare                time.Duration
	prepareArgs            []string
}

func (s *snapshotFlags) register(fs *pflag.FlagSet, defaultN, defaultTouch int, what string) {
	fs.StringVar(&s.vmmBin, "vmm-bin", "", "volt-vmm binary (default: "+bench.DefaultVMMBin+" in the repository)")
	fs.StringVar(&s.kernel, "kernel", "", "probe guest (default: "+bench.DefaultProbe+")")
	fs.StringVar(&s.memory, "memory", "128M", "guest memory")
	fs.IntVar(&s.cpus, "cpus", 1, "vCPUs")
	if what != "" {
		fs.IntVarP(&s.n, "count", "n", defaultN, what)
	}
	fs.DurationVar(&s.timeout, "timeout", 10*time.Second, "per-VM limit; the VMM is killed after it")
	fs.IntVar(&s.touch, "touch", defaultTouch, "4 KiB pages the probe writes before the snapshot, so that memory has content")
	fs.StringVar(&s.dir, "dir", os.TempDir(), "where the temporary snapshot directory is made (a disk, so the memory file's blocks mean something)")
	fs.DurationVar(&s.prepare, "prepare-timeout", 30*time.Second, "limit for booting, touching and snapshotting the probe")
	fs.StringArrayVar(&s.prepareArgs, "prepare-vmm-arg", nil, "extra argument for the volt-vmm that makes the snapshots, not for those measured (repeatable), e.g. --prepare-vmm-arg=--no-seccomp")
}

// probeConfig resolves the probe's boot configuration.
func (s *snapshotFlags) probeConfig(ctx context.Context) (bench.Config, error) {
	return bench.Resolve(ctx, bench.Config{
		VMM: bench.VMMVolt, VMMBin: s.vmmBin, Guest: bench.GuestProbe, Kernel: s.kernel,
		Memory: s.memory, CPUs: s.cpus, Timeout: s.timeout,
	}, "")
}

// tempDir makes the command's scratch directory under --dir; cleanup
// removes it.
func (s *snapshotFlags) tempDir() (string, func(), error) {
	dir, err := os.MkdirTemp(s.dir, "voltbench-snapshot-")
	if err != nil {
		return "", nil, fmt.Errorf("snapshot directory: %w", err)
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// snapshotProbe boots the probe once, snapshots it into dir (and, with
// casStore, into that CAS store too, once per chunk size) and describes the
// snapshot.
func (s *snapshotFlags) snapshotProbe(ctx context.Context, cfg bench.Config, dir, casStore string, chunkSizes []int64, voltBin string, stdout io.Writer) (*bench.Snapshot, error) {
	snap, err := bench.PrepareSnapshot(ctx, bench.SnapshotSpec{
		VMMBin: cfg.VMMBin, Kernel: cfg.Kernel, Memory: cfg.Memory, CPUs: cfg.CPUs,
		TouchPages: s.touch, Dir: dir, Timeout: s.prepare, CASStore: casStore, CASChunkSizes: chunkSizes, VoltBin: voltBin, VMMArgs: s.prepareArgs,
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "snapshot: probe, %s, %d vCPU, %d pages touched; memory file %d bytes, %d KiB on disk; prepared in %v\n",
		snap.Memory, snap.CPUs, snap.TouchPages, snap.MemFileBytes, snap.MemFileAllocated>>10, snap.Took.Round(time.Millisecond))
	return snap, nil
}

func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("restore", pflag.ContinueOnError)
	var (
		s    snapshotFlags
		sess session
		f    floorFlags
		j    jailFlags
	)
	s.register(fs, 100, 0, "restores per arm (and, with --compare-boot, as many cold boots; with --floor, as many floor runs each; with --jail or --ab-vmm-bin, as many of those)")
	compareBoot := fs.Bool("compare-boot", true, "also cold-boot the same probe, interleaved, and print restore against cold boot")
	from := fs.String("from", bench.FromFile, "where restores take their memory from: file (the memory file), cas (a CAS store), or both, interleaved")
	chunkSizes := fs.StringSlice("chunk-size", []string{"2M"}, "with --from cas|both: chunk sizes of the CAS arms, e.g. 2M,256K,64K (one arm each, every one a snapshot volt-vmm cut at that size)")
	voltBin := fs.String("volt-bin", "", "the volt CLI, to describe the CAS arms' manifests (default: "+bench.DefaultVoltBin+" in the repository; optional)")
	concurrency := fs.IntSlice("concurrency", nil, "after the latency run, restores per second with this many in flight at once, e.g. 1,2,8 (each its own volt-vmm on the same snapshot, from the first restore arm)")
	concurrencyN := fs.Int("concurrency-n", 200, "restores per --concurrency level, in 4 rounds that alternate the levels")
	fs.StringVar(&sess.jsonOut, "json", "", "write the results, with encoded HDR histograms, to this file")
	fs.StringVar(&sess.metricsAddr, "metrics-listen", "", "serve Prometheus metrics on this address while running")
	fs.BoolVar(&sess.progress, "progress", false, "draw a progress bar on stderr even when it is not a terminal")
	fs.BoolVar(&sess.noProgress, "no-progress", false, "never draw a progress bar")
	f.register(fs, true)
	j.register(fs, "restore")
	abBin := fs.String("ab-vmm-bin", "", "baseline volt-vmm binary: its restores of the memory file run interleaved with the candidate's (--vmm-bin), side by side with ratios; it restores the candidate's snapshot, or its own where it cannot")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "restore", "unexpected argument %q", fs.Arg(0))
	}
	if err := j.check(fs); err != nil {
		return usage(stderr, "restore", "%v", err)
	}
	if s.touch < 0 {
		return usage(stderr, "restore", "--touch %d: want 0 or more pages", s.touch)
	}
	if s.n < 1 {
		return usage(stderr, "restore", "-n %d: want at least one restore", s.n)
	}
	fromFile, fromCAS, err := bench.ParseFrom(*from)
	if err != nil {
		return usage(stderr, "restore", "--from %v", err)
	}
	var sizes []int64
	for _, c := range *chunkSizes {
		n, err := bench.ParseChunkSize(c)
		if err != nil {
			return usage(stderr, "restore", "--chunk-size: %v", err)
		}
		for _, o := range sizes {
			if o == n {
				return usage(stderr, "restore", "--chunk-size %s given twice", c)
			}
		}
		sizes = append(sizes, n)
	}
	if !fromCAS && fs.Changed("chunk-size") {
		return usage(stderr, "restore", "--chunk-size is for the CAS arms: give --from cas or both")
	}
	if !fromFile && (j.jail || *abBin != "") {
		// A jailed CAS restore needs a view of the store in the chroot,
		// and a baseline's own CAS snapshots a store of their own.
		return usage(stderr, "restore", "--jail and --ab-vmm-bin restore the memory file: give --from file or both")
	}
	if len(*concurrency) > 0 {
		if err := bench.ValidateThroughput(*concurrency, *concurrencyN, bench.ThroughputRounds); err != nil {
			return usage(stderr, "restore", "--concurrency %v, --concurrency-n %d: %v", *concurrency, *concurrencyN, err)
		}
	}
	sess.n, sess.timeout = s.n, s.timeout
	floorDir, err := f.dir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	cfg, err := s.probeConfig(ctx)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	// The volt CLI only describes the CAS arms (and checks their chunk
	// size); the restores run without it, so a missing default is no
	// error, a missing --volt-bin is.
	volt := ""
	if fromCAS {
		if volt, err = bench.ResolveVoltBin(*voltBin); err != nil && *voltBin != "" {
			return fail(stderr, "%v", err)
		}
	}
	dir, cleanup, err := s.tempDir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	fmt.Fprintf(stdout, "load average at start: %s\n", loadAvg())
	store, casSizes := "", []int64(nil)
	if fromCAS {
		store, casSizes = filepath.Join(dir, "store"), sizes
	}
	snap, err := s.snapshotProbe(ctx, cfg, dir, store, casSizes, volt, stdout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	var targets []bench.RestoreTarget
	if fromFile {
		targets = append(targets, bench.FileTarget(snap))
	}
	for _, c := range snap.CAS {
		if volt != "" {
			fmt.Fprintf(stdout, "CAS arm %s: %d chunks of %s, %d of them data (%s MiB mapped from chunk files), manifest %.12s, as volt-vmm's PUT /snapshot/create cut it (mem_backend.chunk_size %d)\n",
				bench.CASTarget(c).Name, c.Chunks, c.ChunkName(), c.DataChunks, fmtMiB(c.DataBytes), c.Manifest, c.ChunkSize)
		} else {
			fmt.Fprintf(stdout, "CAS arm %s: volt-vmm's snapshot cut at %s (mem_backend.chunk_size %d), not described (no volt CLI)\n",
				bench.CASTarget(c).Name, c.ChunkName(), c.ChunkSize)
		}
		targets = append(targets, bench.CASTarget(c))
	}
	arms, err := bench.RestoreArms(cfg, snap, targets, *compareBoot, floorDir)
	if err != nil {
		return fail(stderr, "%v (or --floor=false)", err)
	}
	runner, err := newRunner()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer runner.Close()
	fileArm := armNamed(arms, bench.ArmRestore)
	var baseArm, jailArm *bench.Arm
	if *abBin != "" {
		a, err := abRestoreArm(ctx, runner, &s, cfg, snap, *fileArm, *abBin, dir, stdout)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		arms = insertBefore(arms, bench.ArmRestore, a)
		baseArm = &a
	}
	spans := &bench.SpanRecorder{Spans: bench.RestoreSpans}
	jailSpans := &bench.SpanRecorder{Spans: bench.JailSpans}
	observers := []func(bench.Arm, bench.Boot){spans.Observe}
	var jailed *bench.JailVMMRun
	if j.jail {
		if err := snap.ShareWith(j.uid, j.gidOrUID()); err != nil {
			return fail(stderr, "%v", err)
		}
		ja, cleanup, err := j.arm(*fileArm)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		defer cleanup()
		arms = append(arms, ja)
		jailArm = &ja
		jailed = bench.NewJailVMMRun(ja)
		jailed.Also = spans.Observe
		observers = append(observers, jailed.Observe, jailSpans.Observe)
	}
	runs, err := sess.planWith(ctx, runner, arms, stderr, observers...)
	if len(runs) != len(arms) {
		return fail(stderr, "%v", err)
	}
	floors := bench.Floors(arms, runs)
	if jailed != nil {
		floors[jailed.Run.VMM] = floors[jailArm.Name]
	}
	vmms := nonFloor(runs)
	var restores []*results.Run
	for _, r := range vmms {
		if r.VMM == bench.ArmColdBoot || (jailArm != nil && r.VMM == jailArm.Name) || (baseArm != nil && r.VMM == baseArm.Name) {
			continue
		}
		restores = append(restores, r)
	}
	for _, r := range restores {
		report.WriteTable(stdout, r, floors[r.VMM])
		fmt.Fprintln(stdout)
	}
	if baseArm != nil {
		report.WriteTable(stdout, runNamed(runs, baseArm.Name), floors[baseArm.Name])
		fmt.Fprintln(stdout)
	}
	if jailed != nil {
		report.WriteTable(stdout, jailed.Run, floors[jailed.Run.VMM])
		fmt.Fprintln(stdout)
	}
	if *compareBoot {
		report.WriteTable(stdout, vmms[0], floors[vmms[0].VMM])
		fmt.Fprintf(stdout, "\npeer: cold boot of the same probe under the same volt-vmm, %s, %d vCPU, interleaved with the restores and driven the same way\n"+
			"(%q queued on the console at exec, answer awaited, then poweroff); first-answer is that reply in both\n",
			cfg.Memory, cfg.CPUs, bench.RestoreAsk)
		report.WriteCompare(stdout, bench.RestoreStageNames(), append([]*results.Run{vmms[0]}, restores...), floors)
	}
	if baseArm != nil {
		fmt.Fprintf(stdout, "\nA/B: the memory-file restores of two volt-vmm binaries, interleaved in one session; ratio = candidate / baseline (>1: the candidate is slower); ms since the exec of volt-vmm\n"+
			"  %s: %s, restoring %s\n  %s: %s (the candidate), restoring %s\n",
			baseArm.Name, baseArm.Config.VMMBin, baseArm.Config.RestoreDir, bench.ArmRestore, fileArm.Config.VMMBin, fileArm.Config.RestoreDir)
		report.WriteByStage(stdout, bench.RestoreStageNames(), []*results.Run{runNamed(runs, baseArm.Name), runNamed(runs, bench.ArmRestore)})
	}
	if jailed != nil {
		writeJail(stdout, runNamed(runs, bench.ArmRestore), runNamed(runs, jailArm.Name), jailed, jailSpans, *jailArm)
	}
	if len(restores) > 1 {
		fmt.Fprintf(stdout, "\nrestores side by side, each against %s (ratio > 1: slower), interleaved in the same session\n", restores[0].VMM)
		report.WriteCompare(stdout, bench.RestoreStageNames(), restores, floors)
	}
	fmt.Fprintln(stdout)
	var names []string
	for _, r := range vmms {
		if jailArm == nil || r.VMM != jailArm.Name {
			// The jailed arm's spans are its VMM run's (from the
			// exec of volt-vmm), observed under that name.
			names = append(names, r.VMM)
		}
	}
	if jailed != nil {
		names = append(names, jailed.Run.VMM)
	}
	spans.Write(stdout, names...)
	fmt.Fprintf(stdout, "load average at end: %s\n", loadAvg())
	title := fmt.Sprintf("voltbench restore: probe, %s, %d vCPU, %d pages touched", snap.Memory, snap.CPUs, snap.TouchPages)
	saved, notPlotted := runs, []string(nil)
	if jailed != nil {
		saved = append(append([]*results.Run{}, runs...), jailed.Run)
		notPlotted = []string{jailArm.Name}
	}
	if serr := save(sess.jsonOut, f.plot, title, bench.RestoreStageNames(), saved, append([]string{"restore"}, args...), notPlotted...); serr != nil {
		return fail(stderr, "%v", serr)
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if len(*concurrency) == 0 {
		return exitOK
	}
	spec := bench.ThroughputSpec{
		Config: bench.RestoreTargetConfig(cfg, snap, targets[0]), Levels: *concurrency, N: *concurrencyN, Rounds: bench.ThroughputRounds, Progress: sess.progressBar(stderr),
	}
	if floorDir != "" {
		fa, err := bench.KVMAnswerFloorArm(floorDir, snap.Memory, s.timeout)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		spec.Floor = &fa.Config
	}
	levels, err := runner.RunThroughput(ctx, spec)
	fmt.Fprintf(stdout, "\n%s: ", targets[0].Name)
	bench.WriteThroughput(stdout, levels)
	fmt.Fprintf(stdout, "load average at end: %s\n", loadAvg())
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

func fmtMiB(n int64) string { return fmt.Sprintf("%.2f", float64(n)/(1<<20)) }

func cmdClones(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("clones", pflag.ContinueOnError)
	var s snapshotFlags
	s.register(fs, 50, 2048, "clones running at once, per arm, alternating between the snapshots")
	readBack := fs.Bool("read-back", true, "have every clone read the touched pages (sum), so they are mapped in it, and check them")
	armsFlag := fs.StringSlice("arms", bench.CloneArms, "memory sources to compare, run one after the other: cas (both snapshots' chunks in one store), file (each snapshot's memory file), private (each clone rewrites its pages: its own copy)")
	snapshots := fs.Int("snapshots", 2, "snapshots the clones are split between: 1 (the template itself) or 2 (two restores of one template, after different work)")
	perClone := fs.Bool("per-clone", false, "also print every clone's figures, per arm")
	voltBin := fs.String("volt-bin", "", "the volt CLI, to describe the CAS snapshots (default: "+bench.DefaultVoltBin+" in the repository; optional)")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usage(stderr, "clones", "unexpected argument %q", fs.Arg(0))
	}
	if s.n < 1 || s.touch < 0 {
		return usage(stderr, "clones", "-n %d --touch %d: want at least one clone and 0 or more pages", s.n, s.touch)
	}
	if *snapshots != 1 && *snapshots != 2 {
		return usage(stderr, "clones", "--snapshots %d: want 1 or 2", *snapshots)
	}
	seen := map[string]bool{}
	for _, a := range *armsFlag {
		if seen[a] {
			return usage(stderr, "clones", "--arms: %s given twice", a)
		}
		seen[a] = true
		if !isKnownArm(a) {
			return usage(stderr, "clones", "--arms: %q: want %v", a, bench.CloneArms)
		}
	}
	if len(*armsFlag) == 0 {
		return usage(stderr, "clones", "--arms: none given")
	}
	if seen[bench.ClonePrivate] && s.touch == 0 {
		return usage(stderr, "clones", "--arms private needs --touch > 0: the pages each clone copies")
	}
	cfg, err := s.probeConfig(ctx)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	// The volt CLI only describes the store; the clones run without it,
	// so a missing default is no error, a missing --volt-bin is.
	volt, err := bench.ResolveVoltBin(*voltBin)
	if err != nil && *voltBin != "" {
		return fail(stderr, "%v", err)
	}
	dir, cleanup, err := s.tempDir()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	fmt.Fprintf(stdout, "load average at start: %s\n", loadAvg())
	store := ""
	if seen[bench.CloneCAS] {
		store = filepath.Join(dir, "store")
	}
	snaps, err := cloneSnapshots(ctx, &s, cfg, dir, store, volt, *snapshots, stdout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	var reps []*bench.CloneReport
	for _, a := range bench.CloneArms {
		if !seen[a] {
			continue
		}
		rep, err := bench.RunClones(ctx, bench.CloneSpec{
			VMMBin: cfg.VMMBin, Snapshots: snaps, N: s.n, Arm: a, ReadBack: *readBack,
			// Clones start together on a shared machine: give each its
			// own time plus the whole batch's start-up.
			Timeout: s.timeout + time.Duration(s.n)*time.Second,
		})
		if rep != nil && *perClone && len(rep.Clones) > 0 && rep.Clones[0].PID != 0 {
			bench.WriteClones(stdout, rep)
			fmt.Fprintln(stdout)
		}
		if err != nil {
			return fail(stderr, "%v", err)
		}
		reps = append(reps, rep)
	}
	bench.WriteCloneArms(stdout, reps)
	if store != "" && volt != "" {
		if u, err := (bench.VoltCAS{Bin: volt, Store: store}).Usage(ctx); err == nil {
			fmt.Fprintf(stdout, "CAS store: %d snapshots, logical %s MiB, stored %s MiB in %d chunk files\n", len(u.Objects), fmtMiB(u.LogicalBytes), fmtMiB(u.StoredBytes), u.StoredChunks)
		}
	}
	fmt.Fprintf(stdout, "load average at end: %s\n", loadAvg())
	return exitOK
}

func isKnownArm(a string) bool {
	for _, k := range bench.CloneArms {
		if a == k {
			return true
		}
	}
	return false
}

// cloneExtraPages is how far the second snapshot's work touches past the
// template: 1 MiB that the first snapshot does not have.
const cloneExtraPages = 256

// cloneSnapshots makes the snapshots of a clone run: the template itself
// (n = 1), or two restores of it after different work (n = 2): A rewrites
// the template's pages (same bytes), B also touches cloneExtraPages more.
func cloneSnapshots(ctx context.Context, s *snapshotFlags, cfg bench.Config, dir, store, volt string, n int, stdout io.Writer) ([]*bench.Snapshot, error) {
	tdir := filepath.Join(dir, "template")
	if err := os.Mkdir(tdir, 0o700); err != nil {
		return nil, err
	}
	// With two snapshots the clones restore the derived ones only, so the
	// template needs no CAS copy.
	tmplStore, tmplVolt := "", ""
	if n == 1 && store != "" {
		tmplStore, tmplVolt = store, volt
	}
	tmpl, err := s.snapshotProbe(ctx, cfg, tdir, tmplStore, nil, tmplVolt, stdout)
	if err != nil {
		return nil, err
	}
	if n == 1 {
		return []*bench.Snapshot{tmpl}, nil
	}
	works := [][]string{
		{"echo clone-a", fmt.Sprintf("touch %d", s.touch)},
		{"echo clone-b", fmt.Sprintf("touch %d", s.touch+cloneExtraPages)},
	}
	var snaps []*bench.Snapshot
	for i, w := range works {
		d := filepath.Join(dir, fmt.Sprintf("snapshot-%c", 'a'+i))
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		spec := bench.DeriveSpec{VMMBin: cfg.VMMBin, Template: tmpl, Work: w, Dir: d, Timeout: s.prepare, VMMArgs: s.prepareArgs}
		if store != "" {
			spec.CASStore, spec.VoltBin = store, volt
		}
		snap, err := bench.DeriveSnapshot(ctx, spec)
		if err != nil {
			return nil, err
		}
		snaps = append(snaps, snap)
	}
	return snaps, nil
}

// armNamed is the arm of that name; nil if none.
func armNamed(arms []bench.Arm, name string) *bench.Arm {
	for i := range arms {
		if arms[i].Name == name {
			return &arms[i]
		}
	}
	return nil
}

// insertBefore puts a before the arm named name, so that each round of
// the session restores the baseline just before the candidate.
func insertBefore(arms []bench.Arm, name string, a bench.Arm) []bench.Arm {
	for i := range arms {
		if arms[i].Name == name {
			return append(arms[:i:i], append([]bench.Arm{a}, arms[i:]...)...)
		}
	}
	return append(arms, a)
}

// abRestoreArm is the baseline binary's memory-file arm (--ab-vmm-bin),
// named restore-base, with the candidate's floor. It restores the
// candidate's snapshot when one trial restore of it succeeds; otherwise
// (another snapshot format, a state it refuses) it restores a snapshot it
// made itself, from the same probe, touch and size, and says so.
func abRestoreArm(ctx context.Context, runner *bench.Runner, s *snapshotFlags, cfg bench.Config, snap *bench.Snapshot, file bench.Arm, abBin, dir string, stdout io.Writer) (bench.Arm, error) {
	bin, err := filepath.Abs(abBin)
	if err != nil {
		return bench.Arm{}, fmt.Errorf("--ab-vmm-bin: %w", err)
	}
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return bench.Arm{}, fmt.Errorf("--ab-vmm-bin %s: not a regular file (%v)", abBin, err)
	}
	base := cfg
	base.VMMBin = bin
	c := bench.RestoreConfig(base, snap)
	trial := runner.Boot(ctx, c)
	if trial.Err == nil {
		fmt.Fprintf(stdout, "A/B: the baseline %s restores the candidate's snapshot (one trial restore, not counted): both arms restore %s\n", bin, snap.Dir)
		return bench.Arm{Name: bench.ArmRestore + "-base", Config: c, Floor: file.Floor}, nil
	}
	fmt.Fprintf(stdout, "A/B: the baseline %s cannot restore the candidate's snapshot (%v);\n  each binary restores a snapshot it made itself, of the same probe\n", bin, firstLine(trial.Err.Error()))
	bdir := filepath.Join(dir, "baseline")
	if err := os.Mkdir(bdir, 0o700); err != nil {
		return bench.Arm{}, fmt.Errorf("baseline snapshot: %w", err)
	}
	bsnap, err := s.snapshotProbe(ctx, base, bdir, "", nil, "", stdout)
	if err != nil {
		return bench.Arm{}, fmt.Errorf("baseline snapshot, made by %s: %w", bin, err)
	}
	return bench.Arm{Name: bench.ArmRestore + "-base", Config: bench.RestoreConfig(base, bsnap), Floor: file.Floor}, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	if len(s) > 300 {
		return s[:300] + " …"
	}
	return s
}
