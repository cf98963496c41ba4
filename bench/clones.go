package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/bench/smaps"
)

// Where the clones of a clone run take their guest memory from.
const (
	// CloneCAS restores every snapshot from one CAS store: each data chunk
	// is a file mapped MAP_PRIVATE|MAP_FIXED, so clones of different
	// snapshots share the page cache of every chunk they have in common.
	CloneCAS = "cas"
	// CloneFile restores each snapshot from its own memory file, mapped
	// MAP_PRIVATE: clones of one snapshot share its page cache, clones of
	// different snapshots share nothing.
	CloneFile = "file"
	// ClonePrivate restores from the memory file as CloneFile does, then
	// has the guest write every page it touched before the snapshot again
	// (`touch N`, whose pattern depends on the address alone, so the
	// content stays the same and the checksum must match): each clone then
	// holds its own anonymous copy of the guest's memory, as a VMM that
	// reads the snapshot into its own RAM (QEMU's loadvm, a copying
	// restore) would. The probe's own image and stacks (~0.1 MiB) stay
	// shared; they are not part of `touch`.
	ClonePrivate = "private"
)

// CloneArms are the memory sources voltbench clones knows, in the order it
// runs and prints them.
var CloneArms = []string{CloneCAS, CloneFile, ClonePrivate}

// CloneSpec says how many clones of which snapshots to run at once, with
// their memory from where.
type CloneSpec struct {
	VMMBin string
	// Snapshots are restored in turn: clone i restores Snapshots[i mod
	// len]. For CloneCAS each needs its CAS snapshot, all in one store.
	Snapshots []*Snapshot
	N         int
	Arm       string // CloneCAS, CloneFile or ClonePrivate
	// ReadBack has every clone read the touched pages (`sum`), so that they
	// are mapped in each clone, and checks them against the snapshot.
	// (ClonePrivate rewrites them instead.)
	ReadBack bool
	Timeout  time.Duration // for the whole run
}

// Validate checks the spec before anything starts.
func (s CloneSpec) Validate() error {
	var errs []error
	if s.VMMBin == "" || s.Timeout <= 0 || s.N < 1 {
		errs = append(errs, fmt.Errorf("need a volt-vmm, a timeout and at least one clone (have %d)", s.N))
	}
	if len(s.Snapshots) == 0 {
		errs = append(errs, errors.New("no snapshot"))
	}
	store := ""
	for i, snap := range s.Snapshots {
		switch {
		case snap == nil:
			errs = append(errs, fmt.Errorf("snapshot %d missing", i+1))
		case s.Arm == CloneCAS && snap.FirstCAS() == nil:
			errs = append(errs, fmt.Errorf("snapshot %d has no CAS snapshot", i+1))
		case s.Arm == CloneCAS && store != "" && snap.FirstCAS().Store != store:
			errs = append(errs, fmt.Errorf("snapshots in two CAS stores (%s, %s): clones share chunks only within one", store, snap.FirstCAS().Store))
		case s.Arm == CloneCAS:
			store = snap.FirstCAS().Store
		case snap.MemFileBytes == 0:
			errs = append(errs, fmt.Errorf("snapshot %d has no memory file", i+1))
		case s.Arm == ClonePrivate && snap.TouchPages == 0:
			errs = append(errs, fmt.Errorf("snapshot %d touched no pages: a private copy of nothing (give --touch)", i+1))
		}
	}
	switch s.Arm {
	case CloneCAS, CloneFile, ClonePrivate:
	default:
		errs = append(errs, fmt.Errorf("clone arm %q: want %s", s.Arm, strings.Join(CloneArms, ", ")))
	}
	return errors.Join(errs...)
}

// Clone is one restored VMM, measured while all of them run.
type Clone struct {
	PID      int
	Snapshot int          // index into CloneReport.Snapshots
	GenID    string       // the probe's `gen` answer, 32 hex digits
	Sum      string       // `sum` (or, private, `touch`) checksum
	Total    smaps.Rollup // the whole process: /proc/PID/smaps_rollup
	// Guest is the mappings of files that hold guest memory, from
	// /proc/PID/smaps: the memory file, or the store's chunk files. Pages
	// a clone copied on write are counted there too (Private_Dirty); the
	// anonymous rest of guest memory (a CAS snapshot's holes) is not.
	Guest smaps.Rollup
}

// CloneReport is the outcome of RunClones.
type CloneReport struct {
	Arm       string
	Snapshots []*Snapshot
	ReadBack  bool
	Clones    []Clone
	Started   time.Duration // until every clone had answered
}

// restoreArgs is the volt-vmm command line of a clone of snap (in the CAS
// arm, from its first CAS snapshot).
func (s CloneSpec) restoreArgs(snap *Snapshot) []string {
	if s.Arm == CloneCAS {
		c := snap.FirstCAS()
		return append([]string{"--restore", c.Dir}, append(c.RestoreArgs(), "--console", "stdio")...)
	}
	return []string{"--restore", snap.Dir, "--console", "stdio"}
}

// guestFiles returns the test for the paths of mappings that hold snap's
// guest memory in this arm.
func (s CloneSpec) guestFiles(snap *Snapshot) func(string) bool {
	if s.Arm == CloneCAS {
		chunks := filepath.Join(realPath(snap.FirstCAS().Store), "chunks") + "/"
		return func(p string) bool { return strings.HasPrefix(p, chunks) }
	}
	mem := realPath(snap.MemPath())
	return func(p string) bool { return p == mem }
}

// realPath resolves symbolic links, as /proc/PID/smaps shows paths.
func realPath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// RunClones restores spec.N clones concurrently, has each answer `echo`,
// `gen` (and `sum`, or for ClonePrivate `touch`), reads the memory figures
// of every VMM while all of them run, then powers them all off.
func RunClones(ctx context.Context, spec CloneSpec) (*CloneReport, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("clones: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	rep := &CloneReport{Arm: spec.Arm, Snapshots: spec.Snapshots, ReadBack: spec.ReadBack && spec.Arm != ClonePrivate, Clones: make([]Clone, spec.N)}
	for i := range rep.Clones {
		rep.Clones[i].Snapshot = i % len(spec.Snapshots)
	}
	consoles := make([]*guestConsole, spec.N)
	defer func() {
		for _, c := range consoles {
			if c != nil {
				c.close()
			}
		}
	}()
	start := time.Now()
	errs := make([]error, spec.N)
	var wg sync.WaitGroup
	for i := range spec.N {
		wg.Add(1)
		go func() {
			defer wg.Done()
			snap := spec.Snapshots[rep.Clones[i].Snapshot]
			c, err := startConsole(spec.VMMBin, spec.restoreArgs(snap)...)
			if err != nil {
				errs[i] = fmt.Errorf("clone %d: %w", i+1, err)
				return
			}
			consoles[i] = c
			errs[i] = greetClone(ctx, c, i, rep, snap)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s clones: %w", spec.Arm, err)
	}
	rep.Started = time.Since(start)
	// Every clone is running and has touched what it will touch: measure.
	for i, c := range consoles {
		cl := &rep.Clones[i]
		cl.PID = c.pid()
		var err error
		if cl.Total, err = smaps.ReadRollup(cl.PID); err != nil {
			return nil, fmt.Errorf("clone %d: %w", i+1, err)
		}
		if cl.Guest, err = readMappingsOf(cl.PID, spec.guestFiles(spec.Snapshots[cl.Snapshot])); err != nil {
			return nil, fmt.Errorf("clone %d: %w", i+1, err)
		}
	}
	for i, c := range consoles {
		if _, err := io.WriteString(c.stdin, "poweroff\n"); err != nil {
			errs[i] = fmt.Errorf("clone %d: send poweroff: %w", i+1, err)
		}
	}
	for i, c := range consoles {
		if err := c.waitExit(ctx); err != nil && errs[i] == nil {
			errs[i] = fmt.Errorf("clone %d: %w", i+1, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return rep, err
	}
	if dup := rep.DuplicateGenIDs(); len(dup) > 0 {
		return rep, fmt.Errorf("clones share generation IDs: %s", strings.Join(dup, ", "))
	}
	return rep, nil
}

// greetClone has clone i answer, report its generation ID and, when asked,
// read back (or, private, rewrite) the touched pages.
func greetClone(ctx context.Context, c *guestConsole, i int, rep *CloneReport, snap *Snapshot) error {
	word := fmt.Sprintf("clone-%d", i+1)
	if _, err := c.ask(ctx, "echo "+word, word); err != nil {
		return fmt.Errorf("clone %d: %w", i+1, err)
	}
	line, err := c.ask(ctx, "gen", "gen ")
	if err != nil {
		return fmt.Errorf("clone %d: %w", i+1, err)
	}
	rep.Clones[i].GenID = strings.TrimSpace(strings.TrimPrefix(line, "gen "))
	var command, reply string
	switch {
	case rep.Arm == ClonePrivate:
		command, reply = fmt.Sprintf("touch %d", snap.TouchPages), fmt.Sprintf("touched %d ", snap.TouchPages)
	case rep.ReadBack && snap.TouchPages > 0:
		command, reply = fmt.Sprintf("sum %d", snap.TouchPages), fmt.Sprintf("sum %d ", snap.TouchPages)
	default:
		return nil
	}
	if line, err = c.ask(ctx, command, reply); err != nil {
		return fmt.Errorf("clone %d: %w", i+1, err)
	}
	if rep.Clones[i].Sum, err = probeSum(line); err != nil {
		return fmt.Errorf("clone %d: %w", i+1, err)
	}
	if rep.Clones[i].Sum != snap.TouchSum {
		return fmt.Errorf("clone %d: memory differs from the snapshot: %s gives %s, the snapshot's touch %s", i+1, command, rep.Clones[i].Sum, snap.TouchSum)
	}
	return nil
}

// DuplicateGenIDs lists generation IDs reported by more than one clone (or
// missing).
func (r *CloneReport) DuplicateGenIDs() []string {
	count := map[string]int{}
	for _, c := range r.Clones {
		count[c.GenID]++
	}
	var dup []string
	for _, c := range r.Clones {
		if n := count[c.GenID]; n > 1 || c.GenID == "" {
			dup = append(dup, fmt.Sprintf("%q ×%d", c.GenID, n))
			count[c.GenID] = 0
		}
	}
	return dup
}

// Sum adds the figures of every clone.
func (r *CloneReport) Sum() (total, guest smaps.Rollup) {
	for _, c := range r.Clones {
		total.Add(c.Total)
		guest.Add(c.Guest)
	}
	return total, guest
}

// snapshotLabel names snapshot i of a run: A, B, ….
func snapshotLabel(i int) string { return string(rune('A' + i)) }

// describeSnapshots is one line per snapshot of a clone run.
func describeSnapshots(w io.Writer, snaps []*Snapshot) {
	for i, s := range snaps {
		work := s.Work
		if work == "" {
			work = "none"
		}
		fmt.Fprintf(w, "snapshot %s: %s, %d vCPU, %d pages touched (sum %s); work after the template: %s", snapshotLabel(i), s.Memory, s.CPUs, s.TouchPages, s.TouchSum, work)
		if s.MemFileBytes > 0 {
			fmt.Fprintf(w, "; memory file %d KiB on disk", s.MemFileAllocated>>10)
		}
		if c := s.FirstCAS(); c != nil && c.ChunkSize > 0 {
			fmt.Fprintf(w, "; CAS: %d data chunks of %s (%s MiB)", c.DataChunks, c.ChunkName(), formatMiB(c.DataBytes))
		}
		fmt.Fprintln(w)
	}
}

// WriteClones prints one row per clone of one arm (the whole VMM process,
// and the part of it that is guest memory files), the totals, and what
// sharing saves.
func WriteClones(w io.Writer, r *CloneReport) error {
	fmt.Fprintf(w, "%s: %d clones of %d snapshot(s), all running; restored and answering after %v", r.Arm, len(r.Clones), len(r.Snapshots), r.Started.Round(time.Millisecond))
	switch {
	case r.Arm == ClonePrivate:
		fmt.Fprint(w, "; every clone rewrote its snapshot's touched pages with `touch`, checksum equal")
	case r.ReadBack:
		fmt.Fprint(w, "; every clone read the touched pages back with `sum`, checksum equal")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "kB from /proc/PID/smaps_rollup (whole VMM process); guest = mappings of guest memory files in /proc/PID/smaps")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clone\tsnapshot\tpid\tgeneration ID\tRss\tPss\tShared_Clean\tShared_Dirty\tPrivate_Clean\tPrivate_Dirty\tguest Rss\tguest Pss\tguest Shared_Clean\tguest Private_Dirty\t")
	row := func(label, snap, pid, gen string, t, g smaps.Rollup) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", label, snap, pid, gen,
			t.Rss, t.Pss, t.SharedClean, t.SharedDirty, t.PrivateClean, t.PrivateDirty, g.Rss, g.Pss, g.SharedClean, g.PrivateDirty)
	}
	for i, c := range r.Clones {
		row(fmt.Sprint(i+1), snapshotLabel(c.Snapshot), fmt.Sprint(c.PID), c.GenID, c.Total, c.Guest)
	}
	total, guest := r.Sum()
	row("total", "", "", "", total, guest)
	if err := tw.Flush(); err != nil {
		return err
	}
	saved := func(rss, pss uint64) string {
		if rss == 0 || pss > rss {
			return "-"
		}
		return fmt.Sprintf("%d kB (%.1f %%)", rss-pss, 100*float64(rss-pss)/float64(rss))
	}
	fmt.Fprintf(w, "whole processes: sum of Rss %d kB, sum of Pss %d kB: sharing saves %s\n", total.Rss, total.Pss, saved(total.Rss, total.Pss))
	fmt.Fprintf(w, "guest memory:    sum of Rss %d kB, sum of Pss %d kB: sharing saves %s\n", guest.Rss, guest.Pss, saved(guest.Rss, guest.Pss))
	if dup := r.DuplicateGenIDs(); len(dup) > 0 {
		fmt.Fprintf(w, "generation IDs: NOT distinct: %s\n", strings.Join(dup, ", "))
	} else {
		fmt.Fprintf(w, "generation IDs: %d distinct\n", len(r.Clones))
	}
	return nil
}

// WriteCloneArms prints the arms of one clone run side by side: total PSS
// of all clones and per clone, of the whole processes and of their guest
// memory files, and each arm's total against the first arm's.
func WriteCloneArms(w io.Writer, reps []*CloneReport) error {
	if len(reps) == 0 {
		return errors.New("clones: no arm ran")
	}
	describeSnapshots(w, reps[0].Snapshots)
	fmt.Fprintln(w, "MiB from /proc/PID/smaps_rollup (whole VMM processes) and /proc/PID/smaps (guest = mappings of guest memory files), all clones of an arm running at once")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "arm\tclones\ttotal Pss\tPss/clone\tmin\tmax\ttotal Rss\tguest Pss\tguest Pss/clone\tguest Rss\tguest Private_Dirty\ttotal Pss / %s\t\n", reps[0].Arm)
	mib := func(kb uint64) string { return fmt.Sprintf("%.1f", float64(kb)/1024) }
	base, _ := reps[0].Sum()
	for _, r := range reps {
		total, guest := r.Sum()
		n := uint64(len(r.Clones))
		lo, hi := ^uint64(0), uint64(0)
		for _, c := range r.Clones {
			lo, hi = min(lo, c.Total.Pss), max(hi, c.Total.Pss)
		}
		ratio := "-"
		if base.Pss > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(total.Pss)/float64(base.Pss))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Arm, n, mib(total.Pss), mib(total.Pss/n), mib(lo), mib(hi),
			mib(total.Rss), mib(guest.Pss), mib(guest.Pss/n), mib(guest.Rss), mib(guest.PrivateDirty), ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	distinct := true
	for _, r := range reps {
		if dup := r.DuplicateGenIDs(); len(dup) > 0 {
			distinct = false
			fmt.Fprintf(w, "%s: generation IDs NOT distinct: %s\n", r.Arm, strings.Join(dup, ", "))
		}
	}
	if distinct {
		fmt.Fprint(w, "generation IDs distinct within every arm; ")
	}
	fmt.Fprint(w, "restored and answering after:")
	for _, r := range reps {
		fmt.Fprintf(w, " %s %v", r.Arm, r.Started.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	return nil
}
