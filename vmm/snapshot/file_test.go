package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
)

func validState() *VMState {
	st := &VMState{
		Machine: Machine{CPUs: 2, MemorySize: 16 << 20},
		Memory:  MemoryState{Size: 16 << 20, ID: MemoryID{1}, Regions: []Region{{Guest: 0, Size: 16 << 20}}},
	}
	for i := range 2 {
		st.VCPUs = append(st.VCPUs, VCPUState{ID: i, CPUID: []kvm.CPUIDEntry{{Function: 0}}, MSRs: []kvm.MSR{{Index: 0x10, Data: 7}}})
	}
	st.VCPUs[1].Regs.RIP = 0x1234
	st.Devices.UART.Input = []byte("pending")
	return st
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	in := validState()
	in.Memory.WorkingSet = []memory.PageRange{{First: 0, Count: 3}, {First: 256, Count: 1}, {First: 4095, Count: 1}}
	b, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.VCPUs[1].Regs.RIP != 0x1234 || string(st.Devices.UART.Input) != "pending" || st.VCPUs[0].MSRs[0].Data != 7 || st.Memory.ID != (MemoryID{1}) || len(st.Memory.WorkingSet) != 3 || st.Memory.WorkingSet[1] != (memory.PageRange{First: 256, Count: 1}) {
		t.Fatalf("round trip lost data: %+v", st.VCPUs[1].Regs)
	}
	if st.Format != (Version{MajorVersion, MinorVersion}) {
		t.Errorf("Format = %v, want the file's version", st.Format)
	}
}

func TestDecodeRejects(t *testing.T) {
	good, err := Encode(validState())
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	reencode := func(f func(*VMState)) []byte {
		st := validState()
		f(st)
		b, err := Encode(st)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short header", good[:20], ErrTruncated},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), ErrNotSnapshot},
		{"future major", mutate(func(b []byte) []byte { b[8] = 3; return b }), ErrVersion},
		{"version 1, which has no memory binding", mutate(func(b []byte) []byte { b[8] = 1; return b }), ErrVersion},
		{"future minor", mutate(func(b []byte) []byte { b[10] = MinorVersion + 1; return b }), ErrVersion},
		{"reserved bytes set", mutate(func(b []byte) []byte { b[13] = 1; return b }), ErrInvalid},
		{"payload cut", good[:len(good)-1], ErrTruncated},
		{"extra bytes", append(append([]byte(nil), good...), 0), ErrInvalid},
		{"flipped payload bit", mutate(func(b []byte) []byte { b[len(b)-3] ^= 1; return b }), ErrChecksum},
		{"flipped checksum bit", mutate(func(b []byte) []byte { b[30] ^= 1; return b }), ErrChecksum},
		{"no vCPUs", reencode(func(s *VMState) { s.Machine.CPUs = 0 }), ErrInvalid},
		{"vCPU count mismatch", reencode(func(s *VMState) { s.VCPUs = s.VCPUs[:1] }), ErrInvalid},
		{"memory size mismatch", reencode(func(s *VMState) { s.Memory.Size = 8 << 20 }), ErrInvalid},
		{"unaligned memory", reencode(func(s *VMState) { s.Machine.MemorySize, s.Memory.Size = 100, 100 }), ErrInvalid},
		{"region off layout", reencode(func(s *VMState) { s.Memory.Regions[0].Guest = 4096 }), ErrInvalid},
		{"diff without bitmap", reencode(func(s *VMState) { s.Memory.Diff = true }), ErrInvalid},
		{"full with bitmap", reencode(func(s *VMState) { s.Memory.DirtyBitmap = []uint64{1} }), ErrInvalid},
		{"no memory ID", reencode(func(s *VMState) { s.Memory.ID = MemoryID{} }), ErrInvalid},
		{"full with a base", reencode(func(s *VMState) { s.Memory.BaseID = MemoryID{2} }), ErrInvalid},
		{"diff without a base", reencode(func(s *VMState) { s.Memory.Diff, s.Memory.DirtyBitmap = true, make([]uint64, 64) }), ErrInvalid},
		{"too many MSRs", reencode(func(s *VMState) { s.VCPUs[0].MSRs = make([]kvm.MSR, MaxMSRs+1) }), ErrInvalid},
		{"no CPUID", reencode(func(s *VMState) { s.VCPUs[0].CPUID = nil }), ErrInvalid},
		{"vCPU IDs out of order", reencode(func(s *VMState) { s.VCPUs[0].ID = 1 }), ErrInvalid},
		{"empty working set run", reencode(func(s *VMState) { s.Memory.WorkingSet = []memory.PageRange{{First: 1}} }), ErrInvalid},
		{"working set out of order", reencode(func(s *VMState) { s.Memory.WorkingSet = []memory.PageRange{{First: 5, Count: 2}, {First: 6, Count: 1}} }), ErrInvalid},
		{"working set beyond memory", reencode(func(s *VMState) { s.Memory.WorkingSet = []memory.PageRange{{First: 4095, Count: 2}} }), ErrInvalid},
		{"working set overflowing", reencode(func(s *VMState) { s.Memory.WorkingSet = []memory.PageRange{{First: 1, Count: ^uint64(0)}} }), ErrInvalid},
		{"working set of too many runs", reencode(func(s *VMState) {
			for p := range uint64(memory.MaxWorkingSetRuns + 1) {
				s.Memory.WorkingSet = append(s.Memory.WorkingSet, memory.PageRange{First: p * 2, Count: 1})
			}
		}), ErrInvalid},
		{"XCR count too big", reencode(func(s *VMState) { s.VCPUs[0].XCRs.NrXCRs = 99 }), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Decode(tt.in); !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestStateFileIsSizeCappedAndAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.state")
	if err := WriteStateFile(p, validState()); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStateFile(p); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	big := filepath.Join(dir, "big.state")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(MaxStateSize + 1)
	f.Close()
	if _, err := ReadStateFile(big); err == nil {
		t.Fatal("oversized state file accepted")
	}
	if _, err := ReadStateFile(dir); err == nil {
		t.Fatal("a directory accepted as a state file")
	}
}

func FuzzDecode(f *testing.F) {
	good, err := Encode(validState())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:headerSize])
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Decode(b)
		if err == nil && st.Validate() != nil {
			t.Fatal("Decode returned a state that fails validation")
		}
	})
}

// FuzzDecodePayload fuzzes the JSON behind a valid header and checksum: a
// file whose checksum was recomputed by an attacker still must not crash
// or slip an invalid state through.
func FuzzDecodePayload(f *testing.F) {
	good, err := Encode(validState())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good[headerSize:])
	f.Add([]byte(`{"Machine":{"CPUs":1}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		b := wrap(payload)
		st, err := Decode(b)
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("accepted invalid state: %v", err)
		}
		if len(st.VCPUs) != st.Machine.CPUs {
			t.Fatal("vCPU count mismatch accepted")
		}
	})
}
