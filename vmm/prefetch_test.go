package vmm_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/snapshot"
)

// The probe's touch and sum commands use pages from 4 MiB on.
const touchBase = 4 << 20 / memory.PageSize

func covers(rs []memory.PageRange, first, count uint64) bool {
	for _, r := range rs {
		if r.First <= first && first+count <= r.First+r.Count {
			return true
		}
	}
	return false
}

// TestSnapshotRecordsAndRestorePrefetchesTheWorkingSet: the pages the
// guest touched before its snapshot are in the state's working set, and a
// restore with populate-read maps them before the guest asks (the guest
// stays paused here, so nothing else could map them); without prefetching
// they stay unmapped.
func TestSnapshotRecordsAndRestorePrefetchesTheWorkingSet(t *testing.T) {
	const pages = 300
	state, mem, sum := snapshotProbe(t, vmm.Config{MemorySize: 64 << 20}, pages)
	st, err := snapshot.ReadStateFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if !covers(st.Memory.WorkingSet, touchBase, pages) {
		t.Fatalf("the working set %v does not hold the %d touched pages from page %d", st.Memory.WorkingSet, pages, touchBase)
	}
	for _, how := range []memory.Prefetch{memory.PrefetchNone, memory.PrefetchPopulateRead} {
		t.Run(how.String(), func(t *testing.T) {
			inR, inW := io.Pipe()
			outR, outW := io.Pipe()
			v, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem, Console: outW, ConsoleInput: inR, Prefetch: &how})
			if err != nil {
				t.Fatal(err)
			}
			s := attach(t, v, inW, outR, outW)
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, err := v.Memory().Resident()
				if err != nil {
					t.Fatal(err)
				}
				mapped := covers(got, touchBase, pages)
				if how == memory.PrefetchNone {
					if mapped {
						t.Fatalf("without prefetching, the touched pages are mapped before the guest ran: %v", got)
					}
					break
				}
				if mapped {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("populate-read never mapped the working set; mapped now: %v", got)
				}
				time.Sleep(time.Millisecond)
			}
			for !v.Paused() { // Run has not started yet
				if time.Now().After(deadline) {
					t.Fatal("Run never started")
				}
				time.Sleep(time.Millisecond)
			}
			if err := v.Resume(); err != nil {
				t.Fatal(err)
			}
			s.send(fmt.Sprintf("sum %d", pages))
			if got := strings.TrimPrefix(s.expect(fmt.Sprintf("sum %d sum=", pages)), "sum"); got != sum {
				t.Fatalf("restored memory sums to %q, the guest wrote %q", got, sum)
			}
		})
	}
}

// BenchmarkRestoreFirstAnswer times a restore from vmm.Restore to the
// guest's first answer, for each prefetch of the snapshot's working set
// (a probe that touched 2048 pages, 8 MiB, of 128 MiB), with the memory
// file in the page cache (hot) or dropped from it first (cold), and a
// first request that touches the working set again (sum) or next to
// nothing of it (echo).
func BenchmarkRestoreFirstAnswer(b *testing.B) {
	const pages = 2048
	state, mem, _ := snapshotProbe(b, vmm.Config{MemorySize: 128 << 20}, pages)
	for _, cache := range []string{"hot", "cold"} {
		for _, req := range []string{"sum", "echo"} {
			for _, how := range []memory.Prefetch{memory.PrefetchNone, memory.PrefetchWillNeed, memory.PrefetchPopulateRead} {
				b.Run(fmt.Sprintf("%s/%s/%s", cache, req, how), func(b *testing.B) {
					var total time.Duration
					for range b.N {
						b.StopTimer()
						if cache == "cold" {
							dropCache(b, mem)
						}
						cmd, want := "echo answered", "answered"
						if req == "sum" {
							cmd, want = fmt.Sprintf("sum %d", pages), fmt.Sprintf("sum %d sum=", pages)
						}
						inR, inW := io.Pipe()
						outR, outW := io.Pipe()
						b.StartTimer()
						start := time.Now()
						v, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem, Resume: true, Console: outW, ConsoleInput: inR, Prefetch: &how})
						if err != nil {
							b.Fatal(err)
						}
						s := attach(b, v, inW, outR, outW)
						s.send(cmd)
						s.expect(want)
						total += time.Since(start)
						b.StopTimer()
						v.Stop()
						v.Close()
					}
					b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1e3, "ms/answer")
				})
			}
		}
	}
}

// dropCache evicts a file's pages from the page cache (none may be mapped).
func dropCache(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}
