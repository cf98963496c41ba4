package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// DedupGoal is issue 12's target: all ten snapshots stored in at most this
// many times the space of one. Printed beside the figures, never asserted.
const DedupGoal = 1.3

// DefaultDedupChunkSizes are the chunk sizes issue 12 asks to compare.
var DefaultDedupChunkSizes = []int64{2 << 20, 256 << 10, 64 << 10}

// DefaultDedupWorks are ten pieces of work done on the probe after a restore
// of a template that touched t pages: answers that change only the probe's
// own state, reads of every touched page, rewrites of some or all of them
// (touch writes a pattern that depends on the address alone, so rewritten
// pages keep their bytes), and touches that go past the template's pages
// by 16 to 512 pages (64 KiB to 2 MiB of new memory).
func DefaultDedupWorks(t int) [][]string {
	return [][]string{
		{"echo idle"},
		{"gen", "cpus"},
		{fmt.Sprintf("sum %d", t)},
		{"repeat 200 echo x"},
		{fmt.Sprintf("touch %d", t/4)},
		{fmt.Sprintf("touch %d", t)},
		{fmt.Sprintf("touch %d", t+16)},
		{fmt.Sprintf("touch %d", t+64)},
		{fmt.Sprintf("touch %d", t+256)},
		{"echo before", fmt.Sprintf("touch %d", t+512), "gen"},
	}
}

// DedupSpec says which snapshots to take and how to store them.
type DedupSpec struct {
	VMMBin, Kernel, VoltBin string
	Memory                  string
	CPUs                    int
	TemplateTouch           int        // pages the template touches before its snapshot
	Works                   [][]string // one snapshot per entry, each after a restore of the template
	ChunkSizes              []int64
	Dir                     string        // scratch directory, emptied by the caller
	Timeout                 time.Duration // per snapshot
	Progress                *Progress     // may be nil
	// VMMArgs are extra arguments for the volt-vmm processes that make the
	// snapshots (SnapshotSpec.VMMArgs).
	VMMArgs []string
}

// Validate checks the spec before anything starts.
func (s DedupSpec) Validate() error {
	var errs []error
	if s.VMMBin == "" || s.Kernel == "" || s.VoltBin == "" || s.Dir == "" || s.Timeout <= 0 || s.CPUs < 1 {
		errs = append(errs, errors.New("need volt-vmm, the probe, the volt CLI, a directory, a timeout and vCPUs"))
	}
	if s.TemplateTouch < 0 {
		errs = append(errs, fmt.Errorf("template touches %d pages", s.TemplateTouch))
	}
	if len(s.Works) < 2 {
		errs = append(errs, fmt.Errorf("%d snapshots: dedup needs at least two", len(s.Works)))
	}
	for i, w := range s.Works {
		for _, c := range w {
			if _, err := ProbeReply(c); err != nil {
				errs = append(errs, fmt.Errorf("work %d: %w", i+1, err))
			}
		}
	}
	if len(s.ChunkSizes) == 0 {
		errs = append(errs, errors.New("no chunk size"))
	}
	if err := validateChunkSizes(s.ChunkSizes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// DedupSize is what one chunk size stored.
type DedupSize struct {
	ChunkSize int64
	// Usage is the store that holds every snapshot at this size.
	Usage CASUsage
	// Added[i] is what importing snapshot i added to that store, in order;
	// Alone[i] what it takes in a store of its own.
	Added, Alone []int64
	Took         time.Duration // importing all of them into the shared store
	// VMMDiffer lists the snapshots (numbered from 1) whose manifest
	// volt-vmm cut at this size (PUT /snapshot/create, mem_backend
	// chunk_size) is not the one the CLI's import made of the same bytes.
	// Equal manifests have equal digests, so it must be empty.
	VMMDiffer []int
}

// StoredOverOne is stored bytes of all snapshots over the median snapshot
// alone: issue 12's "≤ 1.3× one snapshot".
func (d DedupSize) StoredOverOne() float64 {
	one := median64(d.Alone)
	if one <= 0 {
		return 0
	}
	return float64(d.Usage.StoredBytes) / float64(one)
}

// DedupReport is the outcome of RunDedup.
type DedupReport struct {
	Template *Snapshot
	// Snapshots, each with its CAS snapshots in the VMM's store, one per
	// chunk size, in the order of Sizes.
	Snapshots []*Snapshot
	Sizes     []DedupSize
}

// RunDedup snapshots the probe once as a template, restores it once per
// work and snapshots each into one CAS store through volt-vmm's API, once
// per chunk size, then stores the same memory again at every chunk size
// with the volt CLI (exported from the VMM's store and imported, all
// snapshots into one store, and each alone into a store of its own): the
// space figures are the CLI's stores, one per size, and each of volt-vmm's
// manifests is checked against the CLI's cut of the same bytes.
func RunDedup(ctx context.Context, spec DedupSpec) (*DedupReport, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	steps := len(spec.Works) * (1 + 2*len(spec.ChunkSizes))
	spec.Progress.Start(steps)
	defer spec.Progress.Done()
	tdir := filepath.Join(spec.Dir, "template")
	if err := os.Mkdir(tdir, 0o700); err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	tmpl, err := PrepareSnapshot(ctx, SnapshotSpec{
		VMMBin: spec.VMMBin, Kernel: spec.Kernel, Memory: spec.Memory, CPUs: spec.CPUs,
		TouchPages: spec.TemplateTouch, Dir: tdir, Timeout: spec.Timeout, VMMArgs: spec.VMMArgs,
	})
	if err != nil {
		return nil, fmt.Errorf("dedup: template: %w", err)
	}
	rep := &DedupReport{Template: tmpl}
	vmmStore := VoltCAS{Bin: spec.VoltBin, Store: filepath.Join(spec.Dir, "vmm-store")}
	for i, w := range spec.Works {
		dir := filepath.Join(spec.Dir, fmt.Sprintf("snapshot-%02d", i+1))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		snap, err := DeriveSnapshot(ctx, DeriveSpec{
			VMMBin: spec.VMMBin, Template: tmpl, Work: w, Dir: dir, NoFile: true,
			CASStore: vmmStore.Store, CASChunkSizes: spec.ChunkSizes, VoltBin: spec.VoltBin, Timeout: spec.Timeout, VMMArgs: spec.VMMArgs,
		})
		if err != nil {
			return nil, fmt.Errorf("dedup: snapshot %d (%s): %w", i+1, strings.Join(w, "; "), err)
		}
		rep.Snapshots = append(rep.Snapshots, snap)
		spec.Progress.Step(0)
	}
	// The RAM bytes of every snapshot, holes kept, as flat files to import.
	raws := make([]string, len(rep.Snapshots))
	for i, s := range rep.Snapshots {
		raws[i] = filepath.Join(s.Dir, "memory.raw")
		if len(s.CAS) != len(spec.ChunkSizes) {
			return nil, fmt.Errorf("dedup: snapshot %d has %d CAS snapshots, want one per chunk size (%d)", i+1, len(s.CAS), len(spec.ChunkSizes))
		}
		if err := vmmStore.Export(ctx, s.CAS[0].Ref, raws[i]); err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
	}
	for k, cs := range spec.ChunkSizes {
		size := DedupSize{ChunkSize: cs}
		shared := VoltCAS{Bin: spec.VoltBin, Store: filepath.Join(spec.Dir, "store-"+FormatChunkSize(cs))}
		start := time.Now()
		for i, raw := range raws {
			imp, err := shared.Import(ctx, raw, fmt.Sprintf("snapshot-%02d", i+1), cs)
			if err != nil {
				return nil, fmt.Errorf("dedup: %w", err)
			}
			size.Added = append(size.Added, imp.NewBytes)
			if imp.Digest != rep.Snapshots[i].CAS[k].Manifest {
				size.VMMDiffer = append(size.VMMDiffer, i+1)
			}
			spec.Progress.Step(0)
		}
		size.Took = time.Since(start)
		if size.Usage, err = shared.Usage(ctx); err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		for i, raw := range raws {
			alone := VoltCAS{Bin: spec.VoltBin, Store: filepath.Join(spec.Dir, fmt.Sprintf("alone-%s-%02d", FormatChunkSize(cs), i+1))}
			if _, err := alone.Import(ctx, raw, "snapshot", cs); err != nil {
				return nil, fmt.Errorf("dedup: %w", err)
			}
			u, err := alone.Usage(ctx)
			if err != nil {
				return nil, fmt.Errorf("dedup: %w", err)
			}
			size.Alone = append(size.Alone, u.StoredBytes)
			if err := os.RemoveAll(alone.Store); err != nil {
				return nil, fmt.Errorf("dedup: %w", err)
			}
			spec.Progress.Step(0)
		}
		rep.Sizes = append(rep.Sizes, size)
	}
	for _, raw := range raws {
		os.Remove(raw)
	}
	return rep, nil
}

// WriteDedup prints, per chunk size, what all snapshots take together
// against one alone, then each snapshot's share.
func WriteDedup(w io.Writer, r *DedupReport) error {
	t := r.Template
	fmt.Fprintf(w, "%d probe snapshots, each a restore of one template (%s, %d vCPU, %d pages touched) after different work, snapshotted by volt-vmm into its CAS store at each chunk size; then the same RAM bytes stored at each chunk size with the volt CLI, a store per size\n",
		len(r.Snapshots), t.Memory, t.CPUs, t.TouchPages)
	fmt.Fprintf(w, "MiB; one snapshot = the median of each snapshot stored alone; issue 12's goal: all of them in ≤ %.1f× one\n", DedupGoal)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "chunk\tsnapshots\tlogical\tdata (no holes)\tstored, all\tone alone: median\tmin\tmax\tstored / one\tstored / logical\tdedup (data / stored)\tchunk files\timport s\t")
	for _, d := range r.Sizes {
		u := d.Usage
		lo, hi := slices.Min(d.Alone), slices.Max(d.Alone)
		ratio := func(a, b int64) string {
			if b <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.3f", float64(a)/float64(b))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f×\t%s\t%s\t%d\t%.2f\t\n", FormatChunkSize(d.ChunkSize), len(d.Added),
			formatMiB(u.LogicalBytes), formatMiB(u.DataBytes), formatMiB(u.StoredBytes), formatMiB(median64(d.Alone)), formatMiB(lo), formatMiB(hi),
			d.StoredOverOne(), ratio(u.StoredBytes, u.LogicalBytes), ratio(u.DataBytes, u.StoredBytes), u.StoredChunks, d.Took.Seconds())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var cuts []string
	for _, d := range r.Sizes {
		if len(d.VMMDiffer) == 0 {
			cuts = append(cuts, fmt.Sprintf("%s the same for all %d", FormatChunkSize(d.ChunkSize), len(d.Added)))
		} else {
			cuts = append(cuts, fmt.Sprintf("%s NOT the same for snapshot(s) %v", FormatChunkSize(d.ChunkSize), d.VMMDiffer))
		}
	}
	fmt.Fprintf(w, "volt-vmm's own cuts (mem_backend.chunk_size) against the volt CLI's import of the same bytes, manifest for manifest: %s\n", strings.Join(cuts, "; "))
	fmt.Fprintln(w, "\nper snapshot, MiB: alone = stored in a store of its own; added = new chunks when imported after the ones above it")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "#\twork\ttouched\t")
	for _, d := range r.Sizes {
		fmt.Fprintf(tw, "alone %s\tadded %s\t", FormatChunkSize(d.ChunkSize), FormatChunkSize(d.ChunkSize))
	}
	fmt.Fprintln(tw)
	for i, s := range r.Snapshots {
		fmt.Fprintf(tw, "%d\t%s\t%d\t", i+1, s.Work, s.TouchPages)
		for _, d := range r.Sizes {
			fmt.Fprintf(tw, "%s\t%s\t", formatMiB(d.Alone[i]), formatMiB(d.Added[i]))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// median64 is the median of xs (the mean of the middle two for an even
// count); 0 for none.
func median64(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
