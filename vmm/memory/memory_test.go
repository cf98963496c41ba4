package memory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestLayout(t *testing.T) {
	tests := []struct {
		name string
		size uint64
		want []Range
	}{
		{"small", 128 << 20, []Range{{0, 128 << 20}}},
		{"exactly the gap", uint64(MMIOGapStart), []Range{{0, uint64(MMIOGapStart)}}},
		{"above the gap", 4 << 30, []Range{{0, uint64(MMIOGapStart)}, {MMIOGapEnd, 1 << 30}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Layout(tt.size)
			if len(got) != len(tt.want) {
				t.Fatalf("Layout(%d) = %v, want %v", tt.size, got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("range %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"anonymous", Config{Size: 16 << 20}, true},
		{"zero", Config{}, false},
		{"unaligned", Config{Size: 4097}, false},
		{"huge unaligned", Config{Size: 3 << 20, Backing: HugePages}, false},
		{"huge", Config{Size: 4 << 20, Backing: HugePages}, true},
		{"file backing without a file", Config{Size: 4096, Backing: PrivateFile}, false},
		{"file without file backing", Config{Size: 4096, File: os.Stdin}, false},
		{"too large", Config{Size: MaxSize + PageSize}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestAccessorsAreBoundsChecked(t *testing.T) {
	m, err := New(Config{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.WriteUint64(0x1000, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	v, err := m.ReadUint64(0x1000)
	if err != nil || v != 0x1122334455667788 {
		t.Fatalf("ReadUint64 = %#x, %v", v, err)
	}
	bad := []struct {
		addr GuestAddr
		n    uint64
	}{
		{1 << 20, 1},
		{1<<20 - 4, 8},
		{0, 1<<20 + 1},
		{^GuestAddr(0), 2},
		{0x10, ^uint64(0)},
	}
	for _, b := range bad {
		if _, err := m.Slice(b.addr, b.n); !errors.Is(err, ErrOutOfBounds) {
			t.Errorf("Slice(%#x, %#x) = %v, want ErrOutOfBounds", uint64(b.addr), b.n, err)
		}
	}
	if err := m.WriteUint32(1<<20-2, 1); !errors.Is(err, ErrOutOfBounds) {
		t.Errorf("WriteUint32 across the end = %v", err)
	}
}

func TestHighMemoryIsReachable(t *testing.T) {
	m, err := New(Config{Size: uint64(MMIOGapStart) + 2<<20})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.Regions()) != 2 {
		t.Fatalf("regions = %d, want 2", len(m.Regions()))
	}
	if err := m.WriteUint8(MMIOGapEnd+5, 7); err != nil {
		t.Fatal(err)
	}
	if m.Mapping()[uint64(MMIOGapStart)+5] != 7 {
		t.Error("high region is not laid out after the low one in the mapping")
	}
	if err := m.WriteUint8(MMIOGapStart, 1); !errors.Is(err, ErrOutOfBounds) {
		t.Errorf("write into the MMIO gap = %v, want ErrOutOfBounds", err)
	}
}

func TestPrivateFileIsCopyOnWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	data := make([]byte, 2*PageSize)
	data[PageSize] = 0xAB
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Size: 2 * PageSize, Backing: PrivateFile, File: openFile(t, path)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if v, _ := m.ReadUint8(PageSize); v != 0xAB {
		t.Fatalf("mapped byte = %#x, want 0xab", v)
	}
	if err := m.WriteUint8(PageSize, 0xCD); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path)
	if after[PageSize] != 0xAB {
		t.Error("a guest write reached the memory file; MAP_PRIVATE must keep it unchanged")
	}
}

func TestPrivateFileSizeMismatchIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(path, make([]byte, PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Size: 2 * PageSize, Backing: PrivateFile, File: openFile(t, path)}); err == nil {
		t.Fatal("mapping a short memory file succeeded; it must fail before any SIGBUS can happen")
	}
}

func openFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// mappedPages counts the pages of m mapped in this process's page tables,
// from the Rss line of /proc/self/smaps: independent of the pagemap that
// DataRuns reads (mincore would not do: for a file mapping it reports the
// page cache).
func mappedPages(t *testing.T, m *Memory) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	start := fmt.Sprintf("%x-", reflect.ValueOf(m.Mapping()).Pointer())
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, start):
			in = true
		case in && strings.HasPrefix(line, "Rss:"):
			var kb int
			if _, err := fmt.Sscanf(strings.TrimPrefix(line, "Rss:"), "%d kB", &kb); err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			return kb * 1024 / PageSize
		}
	}
	t.Fatalf("mapping %s not found in /proc/self/smaps", start)
	return 0
}

// collect gathers what DataRuns reports into a full image, and the pages
// it covered.
func collect(t *testing.T, m *Memory) (image []byte, covered []bool) {
	t.Helper()
	image = make([]byte, m.Size())
	covered = make([]bool, m.Size()/PageSize)
	err := m.DataRuns(func(off uint64, data []byte) error {
		if off%PageSize != 0 || off+uint64(len(data)) > m.Size() {
			t.Fatalf("run at %#x+%#x is not page-aligned or past the end", off, len(data))
		}
		copy(image[off:], data)
		for p := off / PageSize; p < (off+uint64(len(data))+PageSize-1)/PageSize; p++ {
			covered[p] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return image, covered
}

func TestDataRunsOfAnonymousMemoryNeverTouchUntouchedPages(t *testing.T) {
	const pages = 64
	m, err := New(Config{Size: pages * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	written := map[int]bool{3: true, 4: true, 40: true, 63: true}
	for p := range written {
		m.WriteUint8(GuestAddr(p*PageSize+7), byte(p))
	}
	image, covered := collect(t, m)
	for p := range pages {
		if covered[p] != written[p] {
			t.Errorf("page %d: reported %v, written %v", p, covered[p], written[p])
		}
		if written[p] && image[p*PageSize+7] != byte(p) {
			t.Errorf("page %d: content not reported", p)
		}
	}
	if n := mappedPages(t, m); n != len(written) {
		t.Errorf("%d pages mapped after DataRuns, %d were written: it mapped pages nobody touched", n, len(written))
	}
}

func TestDataRunsOfAFileMappingReportTheFileAndTheGuestsWrites(t *testing.T) {
	const pages = 32
	path := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Pages 2 and 20 hold data in the file; the rest are holes. The file
	// is one page longer than memory, as a snapshot's trailer makes it.
	if err := f.Truncate((pages + 1) * PageSize); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int64{2, 20} {
		f.WriteAt([]byte{0xA0 + byte(p)}, p*PageSize)
	}
	f.WriteAt([]byte("trailer"), pages*PageSize)
	f.Close()
	m, err := New(Config{Size: pages * PageSize, Backing: PrivateFile, File: openFile(t, path)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.WriteUint8(GuestAddr(9*PageSize), 0x99) // the guest writes page 9
	m.WriteUint8(GuestAddr(20*PageSize+1), 0x77)
	image, _ := collect(t, m)
	want := make([]byte, pages*PageSize)
	want[2*PageSize], want[9*PageSize], want[20*PageSize], want[20*PageSize+1] = 0xA2, 0x99, 0xB4, 0x77
	if string(image) != string(want) {
		for i := range want {
			if image[i] != want[i] {
				t.Fatalf("byte %#x = %#x, want %#x", i, image[i], want[i])
			}
		}
	}
	if n := mappedPages(t, m); n != 2 {
		t.Errorf("%d pages mapped after DataRuns, the guest wrote 2: it read the file through the mapping", n)
	}
}

func TestHugePagesFallBack(t *testing.T) {
	m, err := New(Config{Size: 4 << 20, Backing: HugePages})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.WriteUint8(3<<20, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("warnings: %v", m.Warnings())
}

func TestChunkMappedMemory(t *testing.T) {
	const pages = 64
	dir := t.TempDir()
	chunk := func(name string, fill byte, n int) *os.File {
		p := filepath.Join(dir, name)
		b := make([]byte, n*PageSize)
		for i := range b {
			b[i] = fill
		}
		if err := os.WriteFile(p, b, 0o444); err != nil {
			t.Fatal(err)
		}
		return openFile(t, p)
	}
	m, err := New(Config{Size: pages * PageSize, Backing: ChunkMapped, Chunks: []Chunk{
		{Offset: 40 * PageSize, Length: 8 * PageSize, File: chunk("b", 0xBB, 8)},
		{Offset: 8 * PageSize, Length: 8 * PageSize, File: chunk("a", 0xAA, 8)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, c := range []struct {
		page int
		want byte
	}{{0, 0}, {8, 0xAA}, {15, 0xAA}, {16, 0}, {40, 0xBB}, {47, 0xBB}, {48, 0}} {
		if v, _ := m.ReadUint8(GuestAddr(c.page*PageSize + 5)); v != c.want {
			t.Errorf("page %d reads %#x, want %#x", c.page, v, c.want)
		}
	}
	m.WriteUint8(GuestAddr(9*PageSize), 0x11)  // copy-on-write in a chunk
	m.WriteUint8(GuestAddr(20*PageSize), 0x22) // anonymous hole
	if b, _ := os.ReadFile(filepath.Join(dir, "a")); b[PageSize] != 0xAA {
		t.Error("a guest write reached a chunk file")
	}
	image, _ := collect(t, m)
	want := make([]byte, pages*PageSize)
	for i := 8 * PageSize; i < 16*PageSize; i++ {
		want[i] = 0xAA
	}
	for i := 40 * PageSize; i < 48*PageSize; i++ {
		want[i] = 0xBB
	}
	want[9*PageSize], want[20*PageSize] = 0x11, 0x22
	if string(image) != string(want) {
		t.Fatal("DataRuns of chunk-mapped memory does not give the chunks, the holes and the guest's writes")
	}
	if n := mappedPages(t, m); n > 2+8+8 {
		t.Errorf("%d pages mapped: DataRuns read chunks through the mapping", n)
	}
}

func TestChunkMappedMemoryRefusesBadChunks(t *testing.T) {
	f := func() *os.File {
		p := filepath.Join(t.TempDir(), "c")
		os.WriteFile(p, make([]byte, 2*PageSize), 0o444)
		return openFile(t, p)
	}
	for name, chunks := range map[string][]Chunk{
		"overlapping":    {{Offset: 0, Length: 2 * PageSize, File: f()}, {Offset: PageSize, Length: PageSize, File: f()}},
		"unaligned":      {{Offset: 100, Length: PageSize, File: f()}},
		"past the end":   {{Offset: 15 * PageSize, Length: 2 * PageSize, File: f()}},
		"no file":        {{Offset: 0, Length: PageSize}},
		"file too short": {{Offset: 0, Length: 4 * PageSize, File: f()}},
	} {
		if m, err := New(Config{Size: 16 * PageSize, Backing: ChunkMapped, Chunks: chunks}); err == nil {
			m.Close()
			t.Errorf("%s chunks accepted", name)
		}
	}
}
