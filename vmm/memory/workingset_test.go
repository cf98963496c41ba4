package memory

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResidentIsWhatWasTouched(t *testing.T) {
	m, err := New(Config{Size: 64 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, err := m.Resident(); err != nil || len(got) != 0 {
		t.Fatalf("fresh memory: Resident() = %v, %v; want nothing", got, err)
	}
	for _, p := range []uint64{3, 4, 10, 63} {
		if err := m.WriteUint8(GuestAddr(p*PageSize), 1); err != nil {
			t.Fatal(err)
		}
	}
	want := []PageRange{{3, 2}, {10, 1}, {63, 1}}
	if got, err := m.Resident(); err != nil || !slices.Equal(got, want) {
		t.Fatalf("Resident() = %v, %v; want %v", got, err, want)
	}
}

// TestPrefetchBringsTheRangesIn: populate-read maps every page of the
// ranges (read-only, still shared with the file: a write copies only then;
// the kernel's fault-around maps some neighbours too), willneed and none
// map nothing, and nothing outside the memory is accepted.
func TestPrefetchBringsTheRangesIn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	data := make([]byte, 64*PageSize)
	for i := range data {
		data[i] = byte(i / PageSize)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ranges := []PageRange{{2, 3}, {5, 1}, {40, 8}}
	for _, c := range []struct {
		how  Prefetch
		want []PageRange
	}{
		{PrefetchNone, nil},
		{PrefetchWillNeed, nil},
		{PrefetchPopulateRead, []PageRange{{2, 4}, {40, 8}}},
	} {
		t.Run(c.how.String(), func(t *testing.T) {
			m, err := New(Config{Size: 64 * PageSize, Backing: PrivateFile, File: openFile(t, path)})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			// Fault-around would map neighbours of a page the test reads
			// through the mapping; the file's pages are read with pread.
			if err := m.Prefetch(ranges, c.how); err != nil {
				if c.how == PrefetchPopulateRead && errors.Is(err, unix.EINVAL) {
					t.Skipf("MADV_POPULATE_READ needs Linux 5.14: %v", err)
				}
				t.Fatal(err)
			}
			got, err := m.Resident()
			if err != nil {
				t.Fatal(err)
			}
			if len(c.want) == 0 && len(got) != 0 {
				t.Fatalf("after Prefetch(%s): Resident() = %v, want nothing", c.how, got)
			}
			for _, w := range c.want {
				if !covers(got, w) {
					t.Errorf("after Prefetch(%s): Resident() = %v does not cover %v", c.how, got, w)
				}
			}
			if n := mappedPages(t, m); n != int(total(got)) || n < int(total(c.want)) {
				t.Errorf("smaps says %d pages mapped; Resident() has %d, the ranges %d", n, total(got), total(c.want))
			}
			b, err := m.ReadUint8(GuestAddr(41 * PageSize))
			if err != nil || b != 41 {
				t.Errorf("page 41 reads %d, %v; want its file content 41", b, err)
			}
		})
	}
	m, err := New(Config{Size: 64 * PageSize, Backing: PrivateFile, File: openFile(t, path)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, bad := range [][]PageRange{{{60, 5}}, {{64, 1}}, {{^uint64(0), 2}}} {
		if err := m.Prefetch(bad, PrefetchWillNeed); err == nil {
			t.Errorf("Prefetch(%v) outside 64 pages succeeded", bad)
		}
	}
	if err := m.Prefetch(ranges, Prefetch(99)); err == nil {
		t.Error("an unknown prefetch succeeded")
	}
}

func TestParsePrefetch(t *testing.T) {
	for p := PrefetchNone; p <= PrefetchPopulateRead; p++ {
		if got, err := ParsePrefetch(p.String()); err != nil || got != p {
			t.Errorf("ParsePrefetch(%q) = %v, %v", p, got, err)
		}
	}
	if _, err := ParsePrefetch("populate"); err == nil {
		t.Error(`ParsePrefetch("populate") succeeded`)
	}
}

func total(rs []PageRange) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Count
	}
	return n
}

func covers(rs []PageRange, w PageRange) bool {
	for _, r := range rs {
		if r.First <= w.First && w.First+w.Count <= r.First+r.Count {
			return true
		}
	}
	return false
}

func TestCoalesceKeepsEveryPageInFewerRuns(t *testing.T) {
	var every []PageRange
	for p := uint64(0); p < 1000; p += 2 {
		every = append(every, PageRange{p, 1})
	}
	every = append(every, PageRange{5000, 3})
	for _, max := range []int{1000, 501, 100, 10, 1, 0} {
		got := Coalesce(every, max)
		if len(got) > max && !(max < 1 && len(got) == 1) {
			t.Errorf("Coalesce(…, %d) has %d runs", max, len(got))
		}
		for _, r := range every {
			if !covers(got, r) {
				t.Fatalf("Coalesce(…, %d) = %v lost %v", max, got, r)
			}
		}
		for i := 1; i < len(got); i++ {
			if got[i].First <= got[i-1].First+got[i-1].Count-1 {
				t.Fatalf("Coalesce(…, %d): runs %v and %v overlap or are out of order", max, got[i-1], got[i])
			}
		}
	}
	if got := Coalesce(every, 501); !slices.Equal(got, every) {
		t.Error("Coalesce changed ranges that already fit")
	}
}
