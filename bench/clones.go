package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/bench/smaps"
)

// CloneSpec says how many clones of which snapshot to run at once.
type CloneSpec struct {
	VMMBin   string
	Snapshot *Snapshot
	N        int
	// ReadBack has every clone read the touched pages (`sum`), so that they
	// are mapped in each clone, and checks them against the snapshot.
	ReadBack bool
	Timeout  time.Duration // for the whole run
}

// Clone is one restored VMM, measured while all of them run.
type Clone struct {
	PID   int
	GenID string       // the probe's `gen` answer, 32 hex digits
	Sum   string       // `sum` checksum when read back
	Total smaps.Rollup // the whole process: /proc/PID/smaps_rollup
	Guest smaps.Rollup // the mappings of the memory file, from /proc/PID/smaps
}

// CloneReport is the outcome of RunClones.
type CloneReport struct {
	Snapshot *Snapshot
	ReadBack bool
	Clones   []Clone
	Started  time.Duration // until every clone had answered
}

// RunClones restores spec.N clones of one snapshot concurrently, has each
// answer `echo`, `gen` (and `sum`), reads the memory figures of every VMM
// while all of them run, then powers them all off.
func RunClones(ctx context.Context, spec CloneSpec) (*CloneReport, error) {
	if spec.N < 1 || spec.Snapshot == nil || spec.VMMBin == "" || spec.Timeout <= 0 {
		return nil, fmt.Errorf("clones: need a volt-vmm, a snapshot, a timeout and at least one clone (have %d)", spec.N)
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	rep := &CloneReport{Snapshot: spec.Snapshot, ReadBack: spec.ReadBack && spec.Snapshot.TouchPages > 0, Clones: make([]Clone, spec.N)}
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
			c, err := startConsole(spec.VMMBin, "--restore", spec.Snapshot.Dir, "--console", "stdio")
			if err != nil {
				errs[i] = fmt.Errorf("clone %d: %w", i+1, err)
				return
			}
			consoles[i] = c
			errs[i] = greetClone(ctx, c, i, rep, spec.Snapshot)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
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
		if cl.Guest, err = smaps.ReadOfFile(cl.PID, spec.Snapshot.MemPath()); err != nil {
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
// read back the touched pages.
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
	if !rep.ReadBack {
		return nil
	}
	line, err = c.ask(ctx, fmt.Sprintf("sum %d", snap.TouchPages), fmt.Sprintf("sum %d ", snap.TouchPages))
	if err != nil {
		return fmt.Errorf("clone %d: %w", i+1, err)
	}
	if rep.Clones[i].Sum, err = probeSum(line); err != nil {
		return fmt.Errorf("clone %d: %w", i+1, err)
	}
	if rep.Clones[i].Sum != snap.TouchSum {
		return fmt.Errorf("clone %d: memory differs from the snapshot: sum %s, touched %s", i+1, rep.Clones[i].Sum, snap.TouchSum)
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

// WriteClones prints one row per clone (the whole VMM process, and the
// part of it that is the guest's memory file), the totals, and what
// sharing saves.
func WriteClones(w io.Writer, r *CloneReport) error {
	s := r.Snapshot
	fmt.Fprintf(w, "%d clones of one snapshot (%s, %d vCPU, %d pages touched before the snapshot", len(r.Clones), s.Memory, s.CPUs, s.TouchPages)
	if r.ReadBack {
		fmt.Fprint(w, "; every clone read them back with `sum`, checksum equal")
	}
	fmt.Fprintf(w, "), all running; restored and answering after %v\n", r.Started.Round(time.Millisecond))
	fmt.Fprintf(w, "memory file %s: %d bytes long, %d KiB allocated on disk (st_blocks)\n", s.MemPath(), s.MemFileBytes, s.MemFileAllocated>>10)
	fmt.Fprintln(w, "kB from /proc/PID/smaps_rollup (whole VMM process); guest = the memory file's mapping in /proc/PID/smaps")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clone\tpid\tgeneration ID\tRss\tPss\tShared_Clean\tShared_Dirty\tPrivate_Clean\tPrivate_Dirty\tguest Rss\tguest Pss\tguest Shared_Clean\tguest Private_Dirty\t")
	row := func(label, pid, gen string, t, g smaps.Rollup) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", label, pid, gen,
			t.Rss, t.Pss, t.SharedClean, t.SharedDirty, t.PrivateClean, t.PrivateDirty, g.Rss, g.Pss, g.SharedClean, g.PrivateDirty)
	}
	for i, c := range r.Clones {
		row(fmt.Sprint(i+1), fmt.Sprint(c.PID), c.GenID, c.Total, c.Guest)
	}
	total, guest := r.Sum()
	row("total", "", "", total, guest)
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
