package bench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

const (
	digestA = "0ec880a03508aa0ec880a03508aa0ec880a03508aa0ec880a03508aa0ec880a0"
	digestB = "8bb513b9a3938bb513b9a3938bb513b9a3938bb513b9a3938bb513b9a3938bb5"
)

func TestParseChunkSize(t *testing.T) {
	for in, want := range map[string]int64{"2M": 2 << 20, "256K": 256 << 10, "64k": 64 << 10, "4096": 4096, "64M": 64 << 20, "1MiB": 1 << 20} {
		if got, err := ParseChunkSize(in); err != nil || got != want {
			t.Errorf("ParseChunkSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if got, _ := ParseChunkSize(FormatChunkSize(want)); got != want {
			t.Errorf("FormatChunkSize(%d) = %q does not parse back", want, FormatChunkSize(want))
		}
	}
	for _, in := range []string{"", "0", "2K", "3M", "128M", "-64K", "64KK", "1G", "1e6", "9999999999999999999"} {
		if n, err := ParseChunkSize(in); err == nil {
			t.Errorf("ParseChunkSize(%q) = %d, want an error", in, n)
		}
	}
}

func TestDescribeCASFindsTheOneNewMemoryRef(t *testing.T) {
	old := CASObject{Name: "snapshot-mem-aa", Digest: digestB, Kind: "memory"}
	added := CASObject{Name: "snapshot-mem-bb", Digest: digestA, Kind: "memory", ChunkSize: 2 << 20, Chunks: 64, DataChunks: 3, DataBytes: 6 << 20}
	c := &CASSnapshot{Store: "/s"}
	if err := describeCAS(c, []CASObject{old}, []CASObject{old, added}); err != nil {
		t.Fatal(err)
	}
	if c.Ref != added.Name || c.Manifest != digestA || c.ChunkSize != 2<<20 || c.DataChunks != 3 || c.ChunkName() != "2M" {
		t.Errorf("described %+v", c)
	}
	// Asked for 2 MiB chunks, and the store has them: described.
	asked := &CASSnapshot{Store: "/s", ChunkSize: 2 << 20}
	if err := describeCAS(asked, []CASObject{old}, []CASObject{old, added}); err != nil || asked.Manifest != digestA {
		t.Errorf("asked for 2M, got %+v: %v", asked, err)
	}
	for name, tc := range map[string]struct {
		asked int64
		after []CASObject
	}{
		"none new": {0, []CASObject{old}},
		"two new":  {0, []CASObject{old, added, {Name: "x", Digest: digestA, Kind: "memory"}}},
		"an image": {0, []CASObject{old, {Name: "img", Digest: digestA, Kind: "image"}}},
		"bad hash": {0, []CASObject{old, {Name: "m", Digest: "zz", Kind: "memory"}}},
		// volt-vmm ignored mem_backend.chunk_size: its own size instead.
		"another chunk size": {64 << 10, []CASObject{old, added}},
	} {
		if err := describeCAS(&CASSnapshot{ChunkSize: tc.asked}, []CASObject{old}, tc.after); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCASStateDirNamesTheChunkSize(t *testing.T) {
	for size, want := range map[int64]string{0: "/d/cas", 2 << 20: "/d/cas-2M", 256 << 10: "/d/cas-256K", 4096: "/d/cas-4K"} {
		if got := CASStateDir("/d", size); got != want {
			t.Errorf("CASStateDir(/d, %d) = %s, want %s", size, got, want)
		}
	}
}

func TestProbeReplies(t *testing.T) {
	for cmd, want := range map[string]string{
		"echo idle":         "idle",
		"echo two words  ":  "two words",
		"touch 100":         "touched 100 ",
		"sum 4096":          "sum 4096 ",
		"gen":               "gen ",
		"cpus":              "cpus ",
		"repeat 200 echo x": "repeat 200 ok=200",
	} {
		if got, err := ProbeReply(cmd); err != nil || got != want {
			t.Errorf("ProbeReply(%q) = %q, %v; want %q", cmd, got, err, want)
		}
	}
	for _, cmd := range []string{"", "echo", "touch", "touch x", "touch -1", "touch 1 2", "gen 3", "repeat 5", "repeat 5 frob", "poweroff", "reset", "panic", "blk write 0 1"} {
		if _, err := ProbeReply(cmd); err == nil {
			t.Errorf("ProbeReply(%q) accepted", cmd)
		}
	}
	if n, ok := touchCount("touch 12"); !ok || n != 12 {
		t.Errorf("touchCount: %d %v", n, ok)
	}
	if _, ok := touchCount("sum 12"); ok {
		t.Error("touchCount of sum")
	}
}

// Bad specs are refused before any VMM starts.
func TestSnapshotSpecsAreCheckedFirst(t *testing.T) {
	tmpl := &Snapshot{Dir: "/t", Memory: "128M", CPUs: 1}
	for name, spec := range map[string]DeriveSpec{
		"no template":             {VMMBin: "v", Dir: "/d", Timeout: time.Second},
		"no memory anywhere":      {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, NoFile: true},
		"volt CLI without store":  {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, VoltBin: "volt"},
		"work the probe lacks":    {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, Work: []string{"poweroff"}},
		"a touch without a count": {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, Work: []string{"touch"}},
	} {
		if _, err := DeriveSnapshot(context.Background(), spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	tmplSpec := func(mutate func(*DeriveSpec)) DeriveSpec {
		s := DeriveSpec{VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, CASStore: "/s"}
		mutate(&s)
		return s
	}
	for name, spec := range map[string]DeriveSpec{
		"chunk sizes without a store": tmplSpec(func(s *DeriveSpec) { s.CASStore, s.CASChunkSizes = "", []int64{64 << 10} }),
		"a chunk size twice":          tmplSpec(func(s *DeriveSpec) { s.CASChunkSizes = []int64{64 << 10, 2 << 20, 64 << 10} }),
		"a chunk size not 2^n":        tmplSpec(func(s *DeriveSpec) { s.CASChunkSizes = []int64{96 << 10} }),
		"a chunk size of 0":           tmplSpec(func(s *DeriveSpec) { s.CASChunkSizes = []int64{0} }),
	} {
		if _, err := DeriveSnapshot(context.Background(), spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := SnapshotSpec{VMMBin: "v", Kernel: "k", CPUs: 1, Dir: "/d", Timeout: time.Second, CASStore: "/s", CASChunkSizes: []int64{2 << 20, 256 << 10, 64 << 10}}
	if err := ok.Validate(); err != nil {
		t.Errorf("three chunk sizes: %v", err)
	}
	for name, mutate := range map[string]func(*SnapshotSpec){
		"a volt CLI to describe a CAS snapshot that is not taken": func(s *SnapshotSpec) { s.CASStore, s.CASChunkSizes, s.VoltBin = "", nil, "volt" },
		"chunk sizes without a store":                             func(s *SnapshotSpec) { s.CASStore = "" },
		"a chunk size twice":                                      func(s *SnapshotSpec) { s.CASChunkSizes = []int64{4096, 4096} },
		"a chunk size above 64M":                                  func(s *SnapshotSpec) { s.CASChunkSizes = []int64{128 << 20} },
		"a chunk size below 4K":                                   func(s *SnapshotSpec) { s.CASChunkSizes = []int64{2048} },
	} {
		s := ok
		mutate(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if c := newCASCuts("/s", nil, ""); len(c.Sizes) != 1 || c.Sizes[0] != 0 {
		t.Errorf("a store and no chunk size: cuts %v, want one at the VMM's default", c.Sizes)
	}
	if c := newCASCuts("", nil, ""); len(c.Sizes) != 0 {
		t.Errorf("no store: cuts %v", c.Sizes)
	}
	if args, err := snapshotterArgs("/d", "", []string{"--no-seccomp"}); err != nil || strings.Join(args, " ") != "--snapshot-dir /d --no-seccomp" {
		t.Errorf("snapshotter args %q, %v", args, err)
	}
	store := t.TempDir() + "/store"
	if args, err := snapshotterArgs("/d", store, nil); err != nil || strings.Join(args, " ") != "--snapshot-dir /d --snapshot-dir "+store {
		t.Errorf("snapshotter args %q, %v", args, err)
	} else if fi, err := os.Stat(store); err != nil || !fi.IsDir() {
		t.Errorf("the store directory was not made: %v", err)
	}
}
