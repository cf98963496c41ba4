package boot

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

// fuzzMemSize is small so that checking every byte after each run is cheap.
const fuzzMemSize = 8 << 20

var (
	fuzzMemOnce sync.Once
	fuzzMem     *memory.Memory
	fuzzMemErr  error
)

// sharedFuzzMemory is created once per fuzz worker process; fuzzLoad leaves
// it all-zero after every run.
func sharedFuzzMemory(t *testing.T) *memory.Memory {
	fuzzMemOnce.Do(func() { fuzzMem, fuzzMemErr = memory.New(memory.Config{Size: fuzzMemSize}) })
	if fuzzMemErr != nil {
		t.Fatal(fuzzMemErr)
	}
	return fuzzMem
}

// fuzzLoad runs Load on arbitrary bytes and checks what it may have
// touched: nothing when it fails (images are checked before writing),
// and nothing above KernelEnd when it succeeds (no initrd is given). Writes
// outside guest memory would fault the process, and the memory package
// turns every out-of-range access into an error, so surviving is part of
// the check.
func fuzzLoad(t *testing.T, data []byte, proto Protocol) {
	m := sharedFuzzMemory(t)
	cfg := Config{Kernel: bytes.NewReader(data), KernelSize: int64(len(data)), CPUs: 1, Protocol: proto, Cmdline: "console=ttyS0"}
	e, err := Load(m, cfg)
	b := m.Mapping()
	if err != nil {
		if e != nil {
			t.Fatalf("Load returned an entry with error %v", err)
		}
		if errors.Is(err, memory.ErrOutOfBounds) {
			t.Fatalf("validation let an out-of-bounds write through: %v", err)
		}
		if i := firstNonZero(m); i >= 0 {
			t.Fatalf("memory written at %#x although Load failed: %v", i, err)
		}
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
	if i := nonZeroAt(b[e.KernelEnd:]); i >= 0 {
		t.Fatalf("memory written at %#x, above KernelEnd %#x", uint64(e.KernelEnd)+uint64(i), uint64(e.KernelEnd))
	}
	clear(b[:e.KernelEnd])
}

func FuzzLoadELF(f *testing.F) {
	f.Add(pvhKernel())
	f.Add(buildELF(elfSpec{entry: 0x100000, pvhEntry: 0x100010, pvhSize: 4, segs: []elfSeg{{paddr: 0x100000, data: pattern(0x200, 1), memsz: 0x1000}}}))
	f.Add(buildELF(elfSpec{entry: 0x200000, segs: []elfSeg{{paddr: 0x200000, data: pattern(0x100, 2)}, {paddr: 0x400000, data: pattern(0x80, 3)}}}))
	f.Add(buildELF(elfSpec{entry: 0x200000, pvhEntry: 0x200000, segs: []elfSeg{{paddr: 0x200000, data: pattern(0x100, 1)}, {paddr: 0x200080, data: pattern(0x100, 2)}}}))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzLoad(t, data, ProtocolAuto)
	})
}

func FuzzLoadBzImage(f *testing.F) {
	f.Add(buildBzImage(defaultBz()))
	s := defaultBz()
	s.relocatable = false
	s.setupSects = 0
	f.Add(buildBzImage(s))
	s = defaultBz()
	s.pref = 0x400000
	s.initSize = 0x10000
	f.Add(buildBzImage(s))
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
