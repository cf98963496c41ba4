package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestDedupSpecValidate(t *testing.T) {
	ok := DedupSpec{VMMBin: "v", Kernel: "k", VoltBin: "volt", Memory: "128M", CPUs: 1, TemplateTouch: 100,
		Works: DefaultDedupWorks(100), ChunkSizes: DefaultDedupChunkSizes, Dir: "/d", Timeout: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(ok.Works) != 10 {
		t.Errorf("%d default works, issue 12 asks for 10 snapshots", len(ok.Works))
	}
	for name, mutate := range map[string]func(*DedupSpec){
		"no volt CLI":       func(s *DedupSpec) { s.VoltBin = "" },
		"one snapshot":      func(s *DedupSpec) { s.Works = s.Works[:1] },
		"unknown command":   func(s *DedupSpec) { s.Works = [][]string{{"echo a"}, {"poweroff"}} },
		"no chunk size":     func(s *DedupSpec) { s.ChunkSizes = nil },
		"chunk not 2^n":     func(s *DedupSpec) { s.ChunkSizes = []int64{96 << 10} },
		"chunk below 4K":    func(s *DedupSpec) { s.ChunkSizes = []int64{2048} },
		"chunk twice":       func(s *DedupSpec) { s.ChunkSizes = []int64{64 << 10, 64 << 10} },
		"negative touch":    func(s *DedupSpec) { s.TemplateTouch = -1 },
		"no timeout":        func(s *DedupSpec) { s.Timeout = 0 },
		"no scratch folder": func(s *DedupSpec) { s.Dir = "" },
	} {
		s := ok
		s.Works = append([][]string(nil), ok.Works...)
		mutate(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWriteDedupShowsStoredAgainstOneSnapshot(t *testing.T) {
	snaps := []*Snapshot{
		{Work: "echo idle", TouchPages: 100},
		{Work: "touch 200", TouchPages: 200},
		{Work: "touch 300", TouchPages: 300},
	}
	rep := &DedupReport{
		Template:  &Snapshot{Memory: "128M", CPUs: 1, TouchPages: 100},
		Snapshots: snaps,
		Sizes: []DedupSize{
			{ChunkSize: 2 << 20, Usage: CASUsage{LogicalBytes: 3 * 128 << 20, DataBytes: 18 << 20, StoredBytes: 10 << 20, StoredChunks: 5},
				Added: []int64{6 << 20, 2 << 20, 2 << 20}, Alone: []int64{6 << 20, 6 << 20, 8 << 20}},
			{ChunkSize: 64 << 10, Usage: CASUsage{LogicalBytes: 3 * 128 << 20, DataBytes: 6 << 20, StoredBytes: 5 << 19, StoredChunks: 40},
				Added: []int64{2 << 20, 1 << 19, 0}, Alone: []int64{2 << 20, 2 << 20, 5 << 19}},
		},
	}
	if got := rep.Sizes[0].StoredOverOne(); got < 1.66 || got > 1.67 {
		t.Errorf("2M stored / one = %v, want 10/6", got)
	}
	var buf bytes.Buffer
	if err := WriteDedup(&buf, rep); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"1.67×", "1.25×", "≤ 1.3×", "2M the same for all 3; 64K the same for all 3", "touch 300", "alone 64K", "added 64K"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	rep.Sizes[1].VMMDiffer = []int{2, 3}
	buf.Reset()
	WriteDedup(&buf, rep)
	if !strings.Contains(buf.String(), "2M the same for all 3; 64K NOT the same for snapshot(s) [2 3]") {
		t.Errorf("a disagreement between volt-vmm's cut and the CLI's import is not shown:\n%s", buf.String())
	}
}

func TestMedian64(t *testing.T) {
	for _, tc := range []struct {
		in   []int64
		want int64
	}{{nil, 0}, {[]int64{5}, 5}, {[]int64{3, 1, 2}, 2}, {[]int64{4, 1, 3, 2}, 2}, {[]int64{10, 20}, 15}} {
		if got := median64(tc.in); got != tc.want {
			t.Errorf("median64(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
