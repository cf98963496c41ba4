package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
	"golang.org/x/sys/unix"
)

// fuzzMemSize is small so that checking memory after each run is cheap:
// the fuzzer runs the target thousands of times to minimise each new input.
const fuzzMemSize = 2 << 20

var (
	fuzzMemOnce sync.Once
	fuzzMem     *memory.Memory
	fuzzMemErr  error
	// fuzzMemDirty is set while a run is in progress; a run that failed
	// leaves it set, and the next run starts from fresh memory so that one
	// failure cannot be blamed on the input after it (the minimiser reruns
	// in the same process).
	fuzzMemDirty bool
	pagemap      *os.File
)

// sharedFuzzMemory is created once per fuzz worker process; fuzzLoad
// returns every page to the kernel after each run. Huge pages are turned
// off so that residency is tracked per 4 KiB page.
func sharedFuzzMemory(t *testing.T) *memory.Memory {
	fuzzMemOnce.Do(func() {
		fuzzMem, fuzzMemErr = memory.New(memory.Config{Size: fuzzMemSize})
		if fuzzMemErr == nil {
			fuzzMemErr = unix.Madvise(fuzzMem.Mapping(), unix.MADV_NOHUGEPAGE)
		}
		if fuzzMemErr == nil {
			pagemap, fuzzMemErr = os.Open("/proc/self/pagemap")
		}
	})
	if fuzzMemErr != nil {
		t.Fatal(fuzzMemErr)
	}
	return fuzzMem
}

// writtenAt returns the offset of the first non-zero byte in b[from:] (as
// an offset into b), or -1. Load never reads guest memory, so a page it did
// not write was never faulted in; /proc/self/pagemap names the present
// pages and only those are scanned, which keeps a run in microseconds.
func writtenAt(t *testing.T, b []byte, from int) int {
	pages := (len(b) + memory.PageSize - 1) / memory.PageSize
	pm := make([]byte, 8*pages)
	base := reflect.ValueOf(b).Pointer()
	if _, err := pagemap.ReadAt(pm, int64(base/memory.PageSize*8)); err != nil {
		t.Fatalf("read pagemap: %v", err)
	}
	for p := from / memory.PageSize; p < pages; p++ {
		const present = 1 << 63
		if binary.LittleEndian.Uint64(pm[8*p:])&present == 0 {
			continue
		}
		lo := max(p*memory.PageSize, from)
		if i := nonZeroAt(b[lo:min((p+1)*memory.PageSize, len(b))]); i >= 0 {
			return lo + i
		}
	}
	return -1
}

func resetFuzzMemory(t *testing.T, b []byte) {
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		t.Fatalf("madvise: %v", err)
	}
}

// fuzzLoad runs Load on arbitrary bytes and checks what it may have
// touched: nothing when it fails (images are checked before writing), and
// nothing above KernelEnd when it succeeds (no initrd is given). Writes
// outside guest memory would fault the process, and the memory package
// turns every out-of-range access into an error, so surviving is part of
// the check.
func fuzzLoad(t *testing.T, data []byte, proto Protocol) {
	m := sharedFuzzMemory(t)
	b := m.Mapping()
	if fuzzMemDirty {
		resetFuzzMemory(t, b)
	}
	fuzzMemDirty = true
	cfg := Config{Kernel: bytes.NewReader(data), KernelSize: int64(len(data)), CPUs: 1, Protocol: proto, Cmdline: "console=ttyS0"}
	e, err := Load(m, cfg)
	if err != nil {
		if e != nil {
			t.Fatalf("Load returned an entry with error %v", err)
		}
		if errors.Is(err, memory.ErrOutOfBounds) {
			t.Fatalf("validation let an out-of-bounds write through: %v", err)
		}
		if i := writtenAt(t, b, 0); i >= 0 {
			t.Fatalf("memory written at %#x although Load failed: %v", i, err)
		}
		fuzzMemDirty = false
		return
	}
	if e.KernelEnd > fuzzMemSize || e.KernelEnd <= HighMemStart {
		t.Fatalf("KernelEnd %#x outside [1 MiB, RAM end]", uint64(e.KernelEnd))
	}
	if e.Protocol == ProtocolPVH && e.RIP > 0xffffffff {
		t.Fatalf("PVH entry %#x above 4 GiB", e.RIP)
	}
	if e.RIP < uint64(HighMemStart) || e.RIP >= uint64(e.KernelEnd) {
		t.Fatalf("RIP %#x outside the kernel [1 MiB, %#x)", e.RIP, uint64(e.KernelEnd))
	}
	if i := writtenAt(t, b, int(e.KernelEnd)); i >= 0 {
		t.Fatalf("memory written at %#x, above KernelEnd %#x", i, uint64(e.KernelEnd))
	}
	resetFuzzMemory(t, b)
	fuzzMemDirty = false
}

func FuzzLoadELF(f *testing.F) {
	// Seeds are kept small: minimising a new input costs one run per byte.
	f.Add(buildELF(elfSpec{entry: 0x100000, pvhEntry: 0x100010, segs: []elfSeg{{paddr: 0x100000, data: pattern(0x40, 1)}, {paddr: 0x180000, data: pattern(0x20, 2), memsz: 0x2000}}}))
	f.Add(buildELF(elfSpec{entry: 0x100000, pvhEntry: 0x100010, pvhSize: 4, segs: []elfSeg{{paddr: 0x100000, data: pattern(0x40, 1), memsz: 0x1000}}}))
	f.Add(buildELF(elfSpec{class32: true, entry: 0x100000, pvhEntry: 0x100010, pvhSize: 4, segs: []elfSeg{{paddr: 0x100000, data: pattern(0x40, 1), memsz: 0x1000}}}))
	f.Add(buildELF(elfSpec{entry: 0x100000, segs: []elfSeg{{paddr: 0x100000, data: pattern(0x40, 2)}, {paddr: 0x140000, data: pattern(0x20, 3)}}}))
	f.Add(buildELF(elfSpec{entry: 0x100000, pvhEntry: 0x100000, segs: []elfSeg{{paddr: 0x100000, data: pattern(0x40, 1)}, {paddr: 0x100020, data: pattern(0x40, 2)}}}))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzLoad(t, data, ProtocolAuto)
	})
}

func FuzzLoadBzImage(f *testing.F) {
	small := func(mod func(*bzSpec)) []byte {
		s := defaultBz()
		s.setupSects = 1
		s.payload = pattern(0x80, 0x42)
		s.pref, s.alignment, s.initSize = 0x100000, 0x100000, 0x40000
		mod(&s)
		return buildBzImage(s)
	}
	f.Add(small(func(*bzSpec) {}))
	f.Add(small(func(s *bzSpec) { s.relocatable = false }))
	f.Add(small(func(s *bzSpec) { s.pref, s.initSize = 0x180000, 0x10000 }))
	f.Add(buildBzImage(defaultBz())[:0x269])
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzLoad(t, data, ProtocolLinux64)
	})
}

func FuzzCmdline(f *testing.F) {
	f.Add("console", "ttyS0", "root=/dev/vda ro", 64)
	f.Add("init.args", "a b c", `x="y z"`, 20)
	f.Add("k", "", "", 1)
	f.Add("a\x00", "\"", "\"unbalanced", 100)
	f.Fuzz(func(t *testing.T, key, value, raw string, max int) {
		c := NewCmdline(max)
		before := c.String()
		if err := c.AppendRaw(raw); err != nil && c.String() != before {
			t.Fatalf("failed AppendRaw changed the line")
		}
		before = c.String()
		if err := c.Append(key, value); err != nil && c.String() != before {
			t.Fatalf("failed Append changed the line")
		}
		got := c.String()
		if len(got) > max && got != "" {
			t.Fatalf("line of %d bytes exceeds max %d", len(got), max)
		}
		if checkPrintable(got) != nil {
			t.Fatalf("line %q has non-printable bytes", got)
		}
		if strings.Count(got, `"`)%2 != 0 {
			t.Fatalf("line %q has unbalanced quotes", got)
		}
		// A line that was built must be accepted again as a whole.
		again := NewCmdline(max)
		if err := again.AppendRaw(got); err != nil || again.String() != got {
			t.Fatalf("rebuilding %q: %v", got, err)
		}
	})
}

// TestFuzzWriteDetector proves the fuzz targets' memory check is not
// vacuous: a stray write is seen, and resetting forgets it.
func TestFuzzWriteDetector(t *testing.T) {
	m := sharedFuzzMemory(t)
	b := m.Mapping()
	resetFuzzMemory(t, b)
	if i := writtenAt(t, b, 0); i != -1 {
		t.Fatalf("fresh memory reports a write at %#x", i)
	}
	if err := m.WriteUint8(0x150123, 7); err != nil {
		t.Fatal(err)
	}
	if i := writtenAt(t, b, 0); i != 0x150123 {
		t.Errorf("write at 0x150123 reported at %#x", i)
	}
	if i := writtenAt(t, b, 0x150124); i != -1 {
		t.Errorf("scan from past the write reports %#x", i)
	}
	resetFuzzMemory(t, b)
	if i := writtenAt(t, b, 0); i != -1 {
		t.Errorf("reset memory reports a write at %#x", i)
	}
}
