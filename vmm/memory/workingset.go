package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"reflect"

	"golang.org/x/sys/unix"
)

// PageRange is a run of Count 4 KiB pages of guest memory starting at page
// First, counted in memory-file order (offset First*PageSize of Mapping()).
type PageRange struct {
	First, Count uint64
}

// Resident returns, in order, the runs of pages this process has mapped
// now (present or swapped out in /proc/self/pagemap): the pages the guest
// or the VMM touched since the memory was mapped, and, for a file mapping,
// the neighbours the kernel mapped with them (fault-around). A snapshot
// records them as the VM's working set, which a restore prefetches. It
// touches no page itself.
func (m *Memory) Resident() ([]PageRange, error) {
	var out []PageRange
	err := m.pagemapRuns(func(start, end uint64, touched bool) error {
		if touched {
			out = append(out, PageRange{First: start, Count: end - start})
		}
		return nil
	})
	return out, err
}

// errNoPagemap is wrapped by pagemapRuns' error when the page map cannot
// be opened at all.
var errNoPagemap = errors.New("no page map")

// pagemapRuns calls fn, in order, with every run of pages [start, end)
// that /proc/self/pagemap reports alike, touched (present or swapped) or
// not.
func (m *Memory) pagemapRuns(fn func(start, end uint64, touched bool) error) error {
	pages := uint64(len(m.mapping)) / PageSize
	if pages == 0 {
		return nil
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return fmt.Errorf("%w: %v", errNoPagemap, err)
	}
	defer pm.Close()
	base := uint64(reflect.ValueOf(m.mapping).Pointer())
	entries := make([]byte, 8*min(pagemapBatch, pages))
	runStart, runTouched := uint64(0), false
	for first := uint64(0); first < pages; first += pagemapBatch {
		n := min(pagemapBatch, pages-first)
		buf := entries[:8*n]
		if _, err := pm.ReadAt(buf, int64((base/PageSize+first)*8)); err != nil {
			return fmt.Errorf("read /proc/self/pagemap: %w", err)
		}
		for i := range n {
			e := binary.LittleEndian.Uint64(buf[8*i:])
			touched := e&(pagemapPresent|pagemapSwapped) != 0
			p := first + i
			if p == 0 {
				runTouched = touched
			}
			if touched != runTouched {
				if err := fn(runStart, p, runTouched); err != nil {
					return err
				}
				runStart, runTouched = p, touched
			}
		}
	}
	return fn(runStart, pages, runTouched)
}

// Prefetch says how a restore brings a snapshot's working set in before
// the guest asks for it.
type Prefetch int

const (
	// PrefetchNone leaves every page to fault in when the guest touches
	// it.
	PrefetchNone Prefetch = iota
	// PrefetchWillNeed asks the kernel to read the working set into the
	// page cache in the background (madvise MADV_WILLNEED): it does not
	// wait, maps nothing and copies nothing, so clones still share every
	// page. It helps when the memory file is not cached (a cold start,
	// another host's snapshot); with a cached file it costs a system call
	// per run.
	PrefetchWillNeed
	// PrefetchPopulateRead maps the working set's pages read-only into the
	// VMM (MADV_POPULATE_READ, Linux 5.14), reading them in first if need
	// be, so the guest's first read of each costs KVM's fault alone; its
	// first write still copies the page. Shared with the page cache as
	// before.
	PrefetchPopulateRead
)

func (p Prefetch) String() string {
	switch p {
	case PrefetchNone:
		return "none"
	case PrefetchWillNeed:
		return "willneed"
	case PrefetchPopulateRead:
		return "populate-read"
	}
	return fmt.Sprintf("Prefetch(%d)", int(p))
}

// ParsePrefetch reads a Prefetch's name.
func ParsePrefetch(s string) (Prefetch, error) {
	for p := PrefetchNone; p <= PrefetchPopulateRead; p++ {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("prefetch %q: want none, willneed or populate-read", s)
}

// Prefetch brings the pages of ranges in as how says. Ranges must lie in
// the memory (a snapshot's working set, checked when it was decoded);
// adjacent ones are advised together. It returns the first error, with
// what was already brought in left in place: prefetching is an
// optimisation, and a failure never makes the memory wrong.
func (m *Memory) Prefetch(ranges []PageRange, how Prefetch) error {
	var advice int
	switch how {
	case PrefetchNone:
		return nil
	case PrefetchWillNeed:
		advice = unix.MADV_WILLNEED
	case PrefetchPopulateRead:
		advice = unix.MADV_POPULATE_READ
	default:
		return fmt.Errorf("unknown prefetch %d", int(how))
	}
	pages := uint64(len(m.mapping)) / PageSize
	for i := 0; i < len(ranges); {
		r := ranges[i]
		first, end := r.First, r.First+r.Count
		for i++; i < len(ranges) && ranges[i].First == end; i++ {
			end += ranges[i].Count
		}
		if end < first || end > pages {
			return fmt.Errorf("prefetch pages %d-%d: outside the memory's %d pages", first, end, pages)
		}
		if err := unix.Madvise(m.mapping[first*PageSize:end*PageSize], advice); err != nil {
			return fmt.Errorf("prefetch pages %d-%d (%s): %w", first, end, how, err)
		}
	}
	return nil
}

// MaxWorkingSetRuns bounds the runs a working set is recorded with, so
// that a fragmented one (every other page of a large guest) cannot make
// the state file, which every restore decodes, large.
const MaxWorkingSetRuns = 4096

// Coalesce returns ranges (in order, not overlapping) with at most max
// runs: runs separated by the smallest gaps are joined, gap sizes doubling
// until the count fits, so the result covers every page of ranges and
// some between them.
func Coalesce(ranges []PageRange, max int) []PageRange {
	if max < 1 {
		max = 1
	}
	out := ranges
	for gap := uint64(1); len(out) > max; gap *= 2 {
		joined := []PageRange{out[0]}
		for _, r := range out[1:] {
			last := &joined[len(joined)-1]
			if r.First-(last.First+last.Count) <= gap {
				last.Count = r.First + r.Count - last.First
				continue
			}
			joined = append(joined, r)
		}
		out = joined
	}
	return out
}
