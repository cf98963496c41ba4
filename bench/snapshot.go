package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

// SnapshotSpec says which probe VM to boot and snapshot.
type SnapshotSpec struct {
	VMMBin     string
	Kernel     string // the probe
	Memory     string // e.g. "128M"
	CPUs       int
	TouchPages int           // pages the probe writes before the snapshot, so memory has content
	Dir        string        // existing directory the snapshot is written to
	Timeout    time.Duration // for the whole preparation
	// CASStore, when set, also snapshots the paused VM into this CAS store
	// (PUT /snapshot/create with mem_backend Cas): the same VM state, its
	// memory in the store, once per size in CASChunkSizes (chunk_size), in
	// that order, each with its state file in CASStateDir(Dir, size);
	// with no sizes, once at the VMM's default, in Dir/cas.
	CASStore      string
	CASChunkSizes []int64
	// VoltBin, the volt CLI, describes the CAS snapshot from the store
	// (manifest, chunk size, data chunks); without it they stay unknown.
	VoltBin string
	// VMMArgs are extra arguments for the volt-vmm that boots and
	// snapshots (it is not measured), e.g. --no-seccomp where this
	// volt-vmm's confinement refuses its own snapshot.
	VMMArgs []string
}

// Validate checks the spec before anything starts.
func (s SnapshotSpec) Validate() error {
	var errs []error
	if s.VMMBin == "" {
		errs = append(errs, errors.New("no volt-vmm binary"))
	}
	if s.Kernel == "" {
		errs = append(errs, errors.New("no probe kernel"))
	}
	if s.CPUs < 1 {
		errs = append(errs, fmt.Errorf("%d vCPUs", s.CPUs))
	}
	if s.TouchPages < 0 {
		errs = append(errs, fmt.Errorf("touch %d pages", s.TouchPages))
	}
	if s.Dir == "" {
		errs = append(errs, errors.New("no snapshot directory"))
	}
	if s.Timeout <= 0 {
		errs = append(errs, errors.New("no timeout"))
	}
	if err := validateCASCuts(s.CASStore, s.CASChunkSizes, s.VoltBin); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validateCASCuts checks the CAS side of a snapshot spec: chunk sizes only
// with a store, each a size volt-vmm takes, none twice; the volt CLI only
// where there is a CAS snapshot to describe.
func validateCASCuts(store string, sizes []int64, voltBin string) error {
	var errs []error
	if voltBin != "" && store == "" {
		errs = append(errs, errors.New("the volt CLI describes a CAS snapshot, and there is no CAS store"))
	}
	if len(sizes) > 0 && store == "" {
		errs = append(errs, errors.New("CAS chunk sizes, and there is no CAS store"))
	}
	if err := validateChunkSizes(sizes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validateChunkSizes checks that every size is one a CAS object may have
// (and so mem_backend.chunk_size takes) and that none comes twice.
func validateChunkSizes(sizes []int64) error {
	var errs []error
	seen := map[int64]bool{}
	for _, c := range sizes {
		if c < MinCASChunkSize || c > MaxCASChunkSize || c&(c-1) != 0 {
			errs = append(errs, fmt.Errorf("chunk size %d: want a power of two from 4K to 64M", c))
		}
		if seen[c] {
			errs = append(errs, fmt.Errorf("chunk size %s given twice", FormatChunkSize(c)))
		}
		seen[c] = true
	}
	return errors.Join(errs...)
}

// Snapshot is a prepared snapshot directory.
type Snapshot struct {
	Dir        string
	Memory     string
	CPUs       int
	TouchPages int
	// TouchSum is the probe's checksum of the touched pages ("0x…"), which
	// `sum TouchPages` must repeat in every restore; "" without a touch.
	TouchSum string
	// The memory file: its length, and the bytes it occupies on disk
	// (st_blocks × 512; zero pages are holes). Zero for a snapshot taken
	// only into the CAS.
	MemFileBytes, MemFileAllocated int64
	Took                           time.Duration // boot, touch, pause, snapshot
	// CAS is the same VM snapshotted into a CAS store by volt-vmm, when
	// asked: one per chunk size asked for, in that order.
	CAS []*CASSnapshot
	// Work is what the guest did after its template's restore, for a
	// snapshot made by DeriveSnapshot: its probe commands, "; "-joined.
	Work string
}

// MemPath is the memory file's path.
func (s *Snapshot) MemPath() string { return filepath.Join(s.Dir, types.SnapshotMemFile) }

// FirstCAS is its first CAS snapshot, nil without one.
func (s *Snapshot) FirstCAS() *CASSnapshot {
	if len(s.CAS) == 0 {
		return nil
	}
	return s.CAS[0]
}

// casCuts says which CAS snapshots takeSnapshots takes: one into Store per
// size (0 alone: the VMM's default), described with the volt CLI VoltBin
// when set.
type casCuts struct {
	Store, VoltBin string
	Sizes          []int64
}

func newCASCuts(store string, sizes []int64, voltBin string) casCuts {
	if store != "" && len(sizes) == 0 {
		sizes = []int64{0}
	}
	return casCuts{Store: store, VoltBin: voltBin, Sizes: sizes}
}

// PrepareSnapshot boots the probe under volt-vmm with its API on a socket
// in spec.Dir, waits for it to be ready, optionally touches pages, pauses
// it, snapshots it into spec.Dir and stops that VMM.
func PrepareSnapshot(ctx context.Context, spec SnapshotSpec) (*Snapshot, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	start := time.Now()
	sock := filepath.Join(spec.Dir, "api.sock")
	args, err := snapshotterArgs(spec.Dir, spec.CASStore, spec.VMMArgs)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	con, err := startConsole(spec.VMMBin, append([]string{"--api-sock", sock, "--kernel", spec.Kernel,
		"--memory", spec.Memory, "--cpus", strconv.Itoa(spec.CPUs), "--console", "stdio"}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer con.close()
	api := client.New(sock)
	defer api.Close()
	if err := waitForAPI(ctx, api, con); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if err := api.Start(ctx); err != nil {
		return nil, fmt.Errorf("snapshot: start the probe: %w", err)
	}
	if _, err := con.expect(ctx, probe.ReadyLine); err != nil {
		return nil, fmt.Errorf("snapshot: boot the probe: %w", err)
	}
	snap := &Snapshot{Dir: spec.Dir, Memory: spec.Memory, CPUs: spec.CPUs, TouchPages: spec.TouchPages}
	if spec.TouchPages > 0 {
		line, err := con.ask(ctx, fmt.Sprintf("touch %d", spec.TouchPages), fmt.Sprintf("touched %d ", spec.TouchPages))
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		if snap.TouchSum, err = probeSum(line); err != nil {
			return nil, fmt.Errorf("snapshot: touch: %w", err)
		}
	}
	if err := takeSnapshots(ctx, api, snap, true, newCASCuts(spec.CASStore, spec.CASChunkSizes, spec.VoltBin)); err != nil {
		return nil, con.explain(err)
	}
	con.terminate(2 * time.Second)
	snap.Took = time.Since(start)
	return snap, nil
}

// snapshotterArgs are the arguments a volt-vmm that will snapshot into dir
// (and casStore) needs beyond the VM's: volt-vmm confines itself with
// Landlock once the VM runs, and only --snapshot-dir directories stay
// writable. The store directory is made here, since volt-vmm checks it.
func snapshotterArgs(dir, casStore string, extra []string) ([]string, error) {
	args := []string{"--snapshot-dir", dir}
	if casStore != "" {
		if err := os.MkdirAll(casStore, 0o700); err != nil {
			return nil, err
		}
		args = append(args, "--snapshot-dir", casStore)
	}
	return append(args, extra...), nil
}

// takeSnapshots pauses the VM behind api and snapshots it into snap.Dir:
// with file, a state and a memory file; then, for every size in cas, a
// state file in CASStateDir(snap.Dir, size) whose memory volt-vmm cut into
// chunks of that size in cas.Store (mem_backend.chunk_size), each
// described with the volt CLI when cas.VoltBin is set. The VM stays paused
// throughout, so every snapshot holds the same VM.
func takeSnapshots(ctx context.Context, api *client.Client, snap *Snapshot, file bool, cas casCuts) error {
	if err := api.Pause(ctx); err != nil {
		return fmt.Errorf("snapshot: pause: %w", err)
	}
	if file {
		if err := api.CreateSnapshot(ctx, types.SnapshotCreateParams{
			SnapshotPath: filepath.Join(snap.Dir, types.SnapshotStateFile),
			MemFilePath:  filepath.Join(snap.Dir, types.SnapshotMemFile),
		}); err != nil {
			return fmt.Errorf("snapshot: create: %w", err)
		}
		var st unix.Stat_t
		if err := unix.Stat(snap.MemPath(), &st); err != nil {
			return fmt.Errorf("snapshot: memory file: %w", err)
		}
		snap.MemFileBytes, snap.MemFileAllocated = st.Size, st.Blocks*512
	}
	if len(cas.Sizes) == 0 {
		return nil
	}
	volt := VoltCAS{Bin: cas.VoltBin, Store: cas.Store}
	var before []CASObject
	if cas.VoltBin != "" && regular(filepath.Join(cas.Store, "VERSION")) == nil {
		var err error
		if before, err = volt.List(ctx); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	for _, size := range cas.Sizes {
		c := &CASSnapshot{Store: cas.Store, Dir: CASStateDir(snap.Dir, size), ChunkSize: size}
		if err := os.Mkdir(c.Dir, 0o700); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		if err := api.CreateSnapshot(ctx, types.SnapshotCreateParams{
			SnapshotPath: c.StatePath(),
			MemBackend:   &types.MemoryBackend{BackendType: types.MemBackendCas, BackendPath: cas.Store, ChunkSize: size},
		}); err != nil {
			return fmt.Errorf("snapshot: create in the CAS store %s at %s chunks: %w", cas.Store, c.ChunkName(), err)
		}
		if cas.VoltBin != "" {
			after, err := volt.List(ctx)
			if err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			if err := describeCAS(c, before, after); err != nil {
				return err
			}
			before = after
		}
		snap.CAS = append(snap.CAS, c)
	}
	return nil
}

// DeriveSpec says how to make a snapshot from a template: restore it, have
// the probe do some work, snapshot it again.
type DeriveSpec struct {
	VMMBin   string
	Template *Snapshot // a file snapshot
	// Work is the probe commands run after the restore, each answered
	// before the next (see ProbeReply for those known).
	Work    []string
	Dir     string // existing directory the snapshot is written to
	NoFile  bool   // snapshot only into CASStore, no memory file
	Timeout time.Duration
	// CASStore, CASChunkSizes, VoltBin and VMMArgs as in SnapshotSpec.
	CASStore, VoltBin string
	CASChunkSizes     []int64
	VMMArgs           []string
}

// DeriveSnapshot restores spec.Template in a new volt-vmm (with its API on a
// socket), runs spec.Work on the probe's console, pauses it and snapshots it
// into spec.Dir (and spec.CASStore). Many snapshots derived from one
// template share most of their memory: what the dedup and clone
// measurements are about.
func DeriveSnapshot(ctx context.Context, spec DeriveSpec) (*Snapshot, error) {
	switch {
	case spec.VMMBin == "" || spec.Template == nil || spec.Dir == "" || spec.Timeout <= 0:
		return nil, errors.New("derive snapshot: need a volt-vmm, a template, a directory and a timeout")
	case spec.NoFile && spec.CASStore == "":
		return nil, errors.New("derive snapshot: no memory file and no CAS store: nowhere to put the memory")
	}
	if err := validateCASCuts(spec.CASStore, spec.CASChunkSizes, spec.VoltBin); err != nil {
		return nil, fmt.Errorf("derive snapshot: %w", err)
	}
	replies := make([]string, len(spec.Work))
	for i, w := range spec.Work {
		r, err := ProbeReply(w)
		if err != nil {
			return nil, fmt.Errorf("derive snapshot: %w", err)
		}
		replies[i] = r
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	start := time.Now()
	sock := filepath.Join(spec.Dir, "api.sock")
	args, err := snapshotterArgs(spec.Dir, spec.CASStore, spec.VMMArgs)
	if err != nil {
		return nil, fmt.Errorf("derive snapshot: %w", err)
	}
	con, err := startConsole(spec.VMMBin, append([]string{"--restore", spec.Template.Dir, "--api-sock", sock, "--console", "stdio"}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("derive snapshot: %w", err)
	}
	defer con.close()
	api := client.New(sock)
	defer api.Close()
	if err := waitForAPI(ctx, api, con); err != nil {
		return nil, fmt.Errorf("derive snapshot: %w", err)
	}
	t := spec.Template
	snap := &Snapshot{Dir: spec.Dir, Memory: t.Memory, CPUs: t.CPUs, TouchPages: t.TouchPages, TouchSum: t.TouchSum, Work: strings.Join(spec.Work, "; ")}
	for i, w := range spec.Work {
		line, err := con.ask(ctx, w, replies[i])
		if err != nil {
			return nil, fmt.Errorf("derive snapshot: %w", err)
		}
		// touch writes a pattern that is a function of each word's
		// address alone, so touching fewer pages than the template
		// rewrites what was there, and more extends it.
		if n, ok := touchCount(w); ok && n > snap.TouchPages {
			if snap.TouchSum, err = probeSum(line); err != nil {
				return nil, fmt.Errorf("derive snapshot: %q: %w", w, err)
			}
			snap.TouchPages = n
		}
	}
	if err := takeSnapshots(ctx, api, snap, !spec.NoFile, newCASCuts(spec.CASStore, spec.CASChunkSizes, spec.VoltBin)); err != nil {
		return nil, con.explain(err)
	}
	con.terminate(2 * time.Second)
	snap.Took = time.Since(start)
	return snap, nil
}

// ProbeReply is the start of the probe's reply to a command that can be
// part of a snapshot's work (guest/probe/README.md): the commands that
// change nothing outside the guest and end in one line.
func ProbeReply(command string) (string, error) {
	f := strings.Fields(command)
	if len(f) == 0 {
		return "", errors.New("an empty probe command")
	}
	number := func(i int) (int, error) {
		if len(f) <= i {
			return 0, fmt.Errorf("probe command %q: missing its count", command)
		}
		n, err := strconv.Atoi(f[i])
		if err != nil || n < 0 {
			return 0, fmt.Errorf("probe command %q: %q is not a count", command, f[i])
		}
		return n, nil
	}
	switch f[0] {
	case "echo":
		if len(f) < 2 {
			return "", fmt.Errorf("probe command %q: echo needs a word (an empty reply cannot be awaited)", command)
		}
		// The probe echoes the rest of the line, trailing blanks dropped.
		return strings.TrimRight(strings.TrimPrefix(strings.TrimLeft(command, " \t"), "echo "), " \t"), nil
	case "touch", "sum":
		n, err := number(1)
		if err != nil || len(f) != 2 {
			return "", fmt.Errorf("probe command %q: want %s N", command, f[0])
		}
		if f[0] == "touch" {
			return fmt.Sprintf("touched %d ", n), nil
		}
		return fmt.Sprintf("sum %d ", n), nil
	case "gen", "cpus":
		if len(f) != 1 {
			return "", fmt.Errorf("probe command %q takes no argument", command)
		}
		return f[0] + " ", nil
	case "repeat":
		n, err := number(1)
		if err != nil || len(f) < 3 {
			return "", fmt.Errorf("probe command %q: want repeat N COMMAND", command)
		}
		if _, err := ProbeReply(strings.Join(f[2:], " ")); err != nil {
			return "", err
		}
		return fmt.Sprintf("repeat %d ok=%d", n, n), nil
	}
	return "", fmt.Errorf("probe command %q: voltbench knows echo, touch, sum, gen, cpus and repeat as work", command)
}

// touchCount is N of a `touch N` command.
func touchCount(command string) (int, bool) {
	f := strings.Fields(command)
	if len(f) != 2 || f[0] != "touch" {
		return 0, false
	}
	n, err := strconv.Atoi(f[1])
	return n, err == nil
}

// probeSum takes the checksum out of a `touched N sum=0x…` or
// `sum N sum=0x…` reply.
func probeSum(line string) (string, error) {
	_, sum, ok := strings.Cut(line, " sum=")
	if !ok || !strings.HasPrefix(sum, "0x") || len(sum) < 3 {
		return "", fmt.Errorf("no checksum in %q", line)
	}
	return sum, nil
}

// waitForAPI waits until the socket answers GET /, or the VMM exits first:
// volt-vmm creates the socket a few milliseconds after its exec.
func waitForAPI(ctx context.Context, api *client.Client, con *guestConsole) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-con.exited:
			cancel()
		case <-stop:
		}
	}()
	defer func() { close(stop); <-done }()
	_, err := api.WaitReady(ctx, 5*time.Millisecond)
	select {
	case <-con.exited:
		return fmt.Errorf("volt-vmm exited before its API answered: %v; stderr %q", con.waitErr, strings.TrimSpace(con.stderr.String()))
	default:
	}
	return err
}

// explain adds to err how the VMM behind c ended, when it ended within a
// moment of err: an API call that fails with EOF is a VMM that died (a
// seccomp kill is "bad system call"), and its stderr says why.
func (c *guestConsole) explain(err error) error {
	select {
	case <-c.exited:
	case <-time.After(500 * time.Millisecond):
		return err
	}
	status := "exit status 0"
	if c.waitErr != nil {
		status = c.waitErr.Error()
	}
	hint := ""
	if strings.Contains(status, "bad system call") {
		// SIGSYS: its own seccomp filter killed it.
		hint = " (volt-vmm's own seccomp filter killed it while snapshotting: a system call its filter lacks; see \"Snapshots made for a run\" in bench/README.md)"
	}
	return fmt.Errorf("%w; volt-vmm ended: %s%s; stderr %q", err, status, hint, strings.TrimSpace(c.stderr.String()))
}
