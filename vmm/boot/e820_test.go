package boot

import (
	"slices"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

func TestMemoryMap(t *testing.T) {
	const MiB, GiB = 1 << 20, 1 << 30
	low := func(end uint64) []MemoryMapEntry {
		return []MemoryMapEntry{
			{0, 0x9fc00, MemRAM},
			{0x9fc00, 0x100000 - 0x9fc00, MemReserved},
			{0x100000, end - 0x100000, MemRAM},
		}
	}
	tests := []struct {
		name string
		size uint64
		want []MemoryMapEntry
	}{
		{"16MiB", 16 * MiB, low(16 * MiB)},
		{"128MiB", 128 * MiB, low(128 * MiB)},
		{"3GiB exactly", 3 * GiB, low(3 * GiB)},
		{"3GiB+2MiB", 3*GiB + 2*MiB, append(low(3*GiB), MemoryMapEntry{4 * GiB, 2 * MiB, MemRAM})},
		{"8GiB", 8 * GiB, append(low(3*GiB), MemoryMapEntry{4 * GiB, 5 * GiB, MemRAM})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MemoryMap(memory.Layout(tt.size))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("MemoryMap(%#x) =\n%+v\nwant\n%+v", tt.size, got, tt.want)
			}
			var ram uint64
			for _, e := range got {
				if e.Type == MemRAM {
					ram += e.Size
				}
			}
			if hidden := tt.size - ram; hidden != 0x100000-0x9fc00 {
				t.Errorf("%#x bytes of RAM not reported, want only the EBDA and legacy hole", hidden)
			}
		})
	}
}

// TestMemoryMapFromRegions: Load builds the map from mapped regions; they
// must agree with the pure layout.
func TestMemoryMapFromRegions(t *testing.T) {
	size := uint64(3<<30 + 4<<20)
	m := newMemory(t, size)
	got, err := MemoryMap(ramRanges(m))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := MemoryMap(memory.Layout(size))
	if !slices.Equal(got, want) || len(got) != 4 {
		t.Errorf("from regions %+v, from layout %+v", got, want)
	}
}

func TestMemoryMapRejects(t *testing.T) {
	for name, ram := range map[string][]memory.Range{
		"none":         nil,
		"not at 0":     {{Start: 0x1000, Size: 16 << 20}},
		"1 MiB only":   {{Start: 0, Size: 1 << 20}},
		"out of order": {{Start: 0, Size: 16 << 20}, {Start: 0x800000, Size: 4096}},
	} {
		if _, err := MemoryMap(ram); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
