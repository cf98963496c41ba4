package bench

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/voltvmm/volt/bench/smaps"
)

const chunkSmaps = `00400000-0070b000 r-xp 00000000 fe:00 10004728                           /work/main/bin/volt-vmm
Rss:                2664 kB
Pss:                2664 kB
Private_Clean:      2664 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0000200000 r--p 00000000 fe:00 11                         /s/chunks/0e/0ec880a0
Rss:                 512 kB
Pss:                 256 kB
Shared_Clean:        512 kB
Private_Dirty:         0 kB
VmFlags: rd mr mw me
7f0000200000-7f0000400000 rw-p 00000000 00:00 0
Rss:                 100 kB
Pss:                 100 kB
Private_Dirty:       100 kB
7f0000400000-7f0000600000 rw-p 00000000 fe:00 12                         /s/chunks/8b/8bb513b9 with space
Rss:                2048 kB
Pss:                2048 kB
Private_Dirty:        16 kB
Anonymous:            16 kB
`

func TestParseMappingsOfSumsTheMatchingFilesOnly(t *testing.T) {
	r, err := parseMappingsOf([]byte(chunkSmaps), func(p string) bool { return strings.HasPrefix(p, "/s/chunks/") })
	if err != nil {
		t.Fatal(err)
	}
	want := smaps.Rollup{Rss: 2560, Pss: 2304, SharedClean: 512, PrivateDirty: 16, Anonymous: 16}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	none, err := parseMappingsOf([]byte(chunkSmaps), func(string) bool { return false })
	if err != nil || none != (smaps.Rollup{}) {
		t.Errorf("no match: %+v %v", none, err)
	}
	// A real VMM's smaps, matched on its binary.
	data, err := os.ReadFile("smaps/testdata/smaps-volt-vmm-clone.txt")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := parseMappingsOf(data, func(p string) bool { return p == "/work/main/bin/volt-vmm" })
	if err != nil || bin.Rss == 0 || bin.Pss > bin.Rss {
		t.Errorf("volt-vmm's own mappings: %+v %v", bin, err)
	}
	if _, err := parseMappingsOf([]byte(chunkSmaps+"Rss: lots kB\n"), func(string) bool { return true }); !errors.Is(err, smaps.ErrMalformed) {
		t.Errorf("a malformed field of a matching mapping: %v", err)
	}
}

// smaps text is the kernel's, but the paths in it are the user's: whatever
// it holds, parsing fails cleanly or sums no more than the whole text.
func FuzzParseMappingsOf(f *testing.F) {
	f.Add([]byte(chunkSmaps))
	f.Add([]byte("0-1 r--p 0 0:0 0 /s/chunks/x\nRss: 1 kB\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		all, err := parseMappingsOf(data, func(string) bool { return true })
		if err != nil {
			if !errors.Is(err, smaps.ErrMalformed) {
				t.Fatalf("error %v does not wrap smaps.ErrMalformed", err)
			}
			return
		}
		some, err := parseMappingsOf(data, func(p string) bool { return strings.HasPrefix(p, "/s/") })
		if err != nil {
			t.Fatalf("a subset failed where the whole parsed: %v", err)
		}
		if some.Rss > all.Rss || some.Pss > all.Pss {
			t.Fatalf("a subset sums more than the whole: %+v > %+v", some, all)
		}
	})
}
