package vmm

import (
	"testing"

	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
)

// FuzzTranslate walks arbitrary guest page tables: a dying guest's CR3 and
// tables are whatever it left, and the walk (for the code bytes at RIP in
// an error report) must stay inside guest RAM whatever they say.
func FuzzTranslate(f *testing.F) {
	const size = 4 << 20
	mem, err := memory.New(memory.Config{Size: size})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint64(0x1000), uint64(0xffffffff81000000), []byte{0x03, 0x20, 0, 0, 0, 0, 0, 0})
	f.Add(uint64(0x3ff000), uint64(0x7fff_ffff_f000), []byte{0x83, 0, 0, 0x40, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, cr3, linear uint64, tables []byte) {
		// The fuzz bytes fill the first pages of RAM, repeated, so
		// entries point at each other and at the edges of RAM.
		page := mem.Mapping()[:64<<10]
		for i := range page {
			if len(tables) > 0 {
				page[i] = tables[i%len(tables)]
			}
		}
		for _, mode := range []struct{ cr0, efer uint64 }{{1 << 31, 1 << 10}, {0, 0}, {1 << 31, 0}} {
			s := kvm.Sregs{CR0: mode.cr0, CR3: cr3, EFER: mode.efer}
			pa, ok := translate(mem, s, linear)
			if !ok {
				continue
			}
			if mode.cr0 == 0 && pa != linear {
				t.Fatalf("paging off: %#x translated to %#x", linear, pa)
			}
			if pa&0xfff != linear&0xfff {
				t.Fatalf("%#x translated to %#x: the page offset changed", linear, pa)
			}
		}
	})
}
