package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
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
		{"binary section longer than the payload", mutate(func(b []byte) []byte { b[13] = 1; return b }), ErrInvalid},
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

// decodesOnlyValid fails t if Decode accepts b as a state that is not
// valid.
func decodesOnlyValid(t *testing.T, b []byte) {
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
	f.Fuzz(func(t *testing.T, payload []byte) { decodesOnlyValid(t, wrap(payload)) })
}

// sections splits a 2.3 file made by Encode into its JSON and its binary
// section.
func sections(t testing.TB, b []byte) (doc, section []byte) {
	t.Helper()
	n := binary.LittleEndian.Uint32(b[12:])
	payload := b[headerSize:]
	return payload[:len(payload)-int(n)], payload[len(payload)-int(n):]
}

// Files of every earlier minor version still decode, to the same state.
func TestDecodeReadsEveryEarlierMinor(t *testing.T) {
	in := validState()
	in.VCPUs[0].XSave.Region[7] = 0xdeadbeef
	in.VCPUs[1].LAPIC.Regs[0x20] = 1
	type objectsState struct {
		VMState
		VCPUs []vcpuObjects
	}
	objects := objectsState{VMState: *in}
	for _, c := range in.VCPUs {
		objects.VCPUs = append(objects.VCPUs, vcpuObjects(c))
	}
	blocks, err := json.Marshal(in) // VCPUState.MarshalJSON: the 2.2 form
	if err != nil {
		t.Fatal(err)
	}
	objectsDoc, err := json.Marshal(objects)
	if err != nil {
		t.Fatal(err)
	}
	current, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		file  []byte
		minor uint16
	}{
		{"2.0, vCPU objects", wrapAs(0, objectsDoc, nil), 0},
		{"2.2, base64 blocks in the JSON", wrapAs(2, blocks, nil), 2},
		{"2.3, blocks in the binary section", current, MinorVersion},
	} {
		st, err := Decode(tc.file)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if st.Format.Minor != tc.minor || st.VCPUs[0].XSave.Region[7] != 0xdeadbeef || st.VCPUs[1].LAPIC.Regs[0x20] != 1 ||
			st.VCPUs[1].Regs.RIP != 0x1234 || st.VCPUs[0].MSRs[0].Data != 7 || len(st.VCPUs[1].CPUID) != 1 {
			t.Errorf("%s: decoded %v with vCPUs %+v", tc.name, st.Format, st.VCPUs)
		}
	}
	if doc, _ := sections(t, current); bytes.Contains(doc, []byte(`"Arch"`)) || bytes.Contains(doc, []byte(`"XSave"`)) {
		t.Errorf("a 2.3 file's JSON holds vCPU blocks: %s", doc)
	}
}

// A binary section that does not hold exactly one well-formed block per
// vCPU of the JSON is refused, as is a 2.3 JSON that carries blocks itself.
func TestDecodeRefusesBadBinarySections(t *testing.T) {
	good, err := Encode(validState())
	if err != nil {
		t.Fatal(err)
	}
	doc, section := sections(t, good)
	first := binary.LittleEndian.Uint32(section)
	blocks, err := json.Marshal(validState())
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), section...)) }
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"no section", wrapAs(MinorVersion, doc, nil), "ends before vCPU state 0"},
		{"one block only", wrapAs(MinorVersion, doc, section[:4+first]), "ends before vCPU state 1"},
		{"a byte after the last block", wrapAs(MinorVersion, doc, edit(func(b []byte) []byte { return append(b, 0) })), "after the last vCPU's block"},
		{"a block longer than the section", wrapAs(MinorVersion, doc, edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b, 1<<30); return b })), "promises a"},
		{"a block one byte short", wrapAs(MinorVersion, doc, edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b, first-1)
			return append(b[:4+first-1], b[4+first:]...)
		})), "vCPU 0 state"},
		{"blocks in a 2.3 JSON", wrapAs(MinorVersion, blocks, nil), "unknown field"},
		{"a section in a 2.2 file", wrapAs(2, blocks, []byte{0}), "reserved header bytes"},
		{"half the JSON in the section", wrapAs(MinorVersion, doc[:len(doc)/2], append(doc[len(doc)/2:], section...)), "decode"},
	} {
		_, err := Decode(tc.file)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an invalid-state error saying %q", tc.name, err, tc.want)
		}
	}
}

// FuzzDecodeSections fuzzes a 2.3 file's JSON and binary section behind a
// valid header and checksum.
func FuzzDecodeSections(f *testing.F) {
	good, err := Encode(validState())
	if err != nil {
		f.Fatal(err)
	}
	doc, section := sections(f, good)
	f.Add(doc, section)
	f.Add(doc, section[:10])
	f.Add([]byte(`{"Machine":{"CPUs":1},"VCPUs":[{"ID":0}]}`), []byte{4, 0, 0, 0, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, doc, section []byte) { decodesOnlyValid(t, wrapAs(MinorVersion, doc, section)) })
}
