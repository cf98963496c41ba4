package memory

import (
	"errors"
	"os"
	"path/filepath"
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
		{"file without path", Config{Size: 4096, Backing: PrivateFile}, false},
		{"path without file backing", Config{Size: 4096, Path: "/x"}, false},
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
	m, err := New(Config{Size: 2 * PageSize, Backing: PrivateFile, Path: path})
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
	if _, err := New(Config{Size: 2 * PageSize, Backing: PrivateFile, Path: path}); err == nil {
		t.Fatal("mapping a short memory file succeeded; it must fail before any SIGBUS can happen")
	}
	if _, err := New(Config{Size: PageSize, Backing: PrivateFile, Path: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("mapping a missing memory file succeeded")
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
