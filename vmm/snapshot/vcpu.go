package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/voltvmm/volt/vmm/kvm"
)

// From format 2.2 on a vCPU's architectural state is one binary block
// instead of a dozen nested objects: decoding the objects took 0.38 ms of
// the 0.8 ms a 1-vCPU state took to decode (its 80 CPUID leaves alone
// 0.22 ms), and encoding/json builds a decoder for every type it meets on
// the first restore of a process. Format 2.2 holds the block as base64 in
// the JSON (vcpuJSON.Arch); from 2.3 on it follows the JSON in the file's
// binary section (file.go), and the JSON keeps only vcpuHead. The block
// holds, in this order, each in encoding/binary's little-endian layout of
// the kvm type (packed, blank fields zero):
//
//	Regs | Sregs | XSave | XCRs | DebugRegs | LAPIC | Events |
//	u32 n | n MSRs | u32 m | m CPUID entries
//
// Files of formats 2.0 and 2.1 hold the objects, which still decode.

// vcpuHead is what the JSON of a 2.3 file holds of a vCPU; its block is in
// the binary section.
type vcpuHead struct {
	ID      int
	MPState uint32
	TSCKHz  uint32
}

// vcpuJSON is VCPUState's JSON form in a 2.2 file.
type vcpuJSON struct {
	ID      int
	MPState uint32
	TSCKHz  uint32
	Arch    []byte
}

// vcpuObjects is VCPUState without its methods: the form of formats 2.0
// and 2.1.
type vcpuObjects VCPUState

// The fixed-size parts of the block, in order.
func (s *VCPUState) fixedParts() []any {
	return []any{&s.Regs, &s.Sregs, &s.XSave, &s.XCRs, &s.DebugRegs, &s.LAPIC, &s.Events}
}

// MarshalJSON writes the 2.2 form: the architectural state as one base64
// block in the JSON. Encode writes 2.3, with the block outside the JSON.
func (s VCPUState) MarshalJSON() ([]byte, error) {
	b, err := s.appendArch(make([]byte, 0, s.archSize()))
	if err != nil {
		return nil, err
	}
	return json.Marshal(vcpuJSON{ID: s.ID, MPState: s.MPState, TSCKHz: s.TSCKHz, Arch: b})
}

// archSize is the length of s's block.
func (s *VCPUState) archSize() int { return 6144 + 4 + 12*len(s.MSRs) + 4 + 28*len(s.CPUID) }

// appendArch appends s's architectural state as one block to b.
func (s *VCPUState) appendArch(b []byte) ([]byte, error) {
	// Counts are not bounded here (the decoder bounds them): Validate
	// refuses a state with too many, and tests write such files.
	for _, p := range s.fixedParts() {
		if p == &s.XSave {
			b = appendXSave(b, &s.XSave)
			continue
		}
		var err error
		if b, err = binary.Append(b, binary.LittleEndian, p); err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", s.ID, err)
		}
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s.MSRs)))
	for _, m := range s.MSRs {
		b = binary.LittleEndian.AppendUint32(b, m.Index)
		b = binary.LittleEndian.AppendUint64(b, m.Data)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s.CPUID)))
	for _, e := range s.CPUID {
		for _, v := range [...]uint32{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX} {
			b = binary.LittleEndian.AppendUint32(b, v)
		}
	}
	return b, nil
}

// UnmarshalJSON reads either form, refusing unknown fields (a state file is
// untrusted) and a block of any other length than its counts give.
func (s *VCPUState) UnmarshalJSON(data []byte) error {
	var j vcpuJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		// A 2.0 or 2.1 file: the objects.
		var old vcpuObjects
		odec := json.NewDecoder(bytes.NewReader(data))
		odec.DisallowUnknownFields()
		if oerr := odec.Decode(&old); oerr != nil {
			return fmt.Errorf("vCPU state: %w", oerr)
		}
		*s = VCPUState(old)
		return nil
	}
	if j.Arch == nil {
		return errors.New("vCPU state: no architectural state")
	}
	return s.decodeArch(vcpuHead{ID: j.ID, MPState: j.MPState, TSCKHz: j.TSCKHz}, j.Arch)
}

// decodeArch sets *s to head and the architectural state in block b,
// refusing a block of any other length than its counts give.
func (s *VCPUState) decodeArch(head vcpuHead, b []byte) error {
	st := VCPUState{ID: head.ID, MPState: head.MPState, TSCKHz: head.TSCKHz}
	for _, p := range st.fixedParts() {
		var n int
		var err error
		if p == &st.XSave {
			n, err = decodeXSave(b, &st.XSave)
		} else {
			n, err = binary.Decode(b, binary.LittleEndian, p)
		}
		if err != nil {
			return fmt.Errorf("vCPU %d state: %w", head.ID, err)
		}
		b = b[n:]
	}
	msrs, b, err := count(b, MaxMSRs, 12, "MSRs")
	if err != nil {
		return fmt.Errorf("vCPU %d state: %w", head.ID, err)
	}
	if msrs > 0 {
		st.MSRs = make([]kvm.MSR, msrs)
	}
	for i := range st.MSRs {
		st.MSRs[i].Index = binary.LittleEndian.Uint32(b)
		st.MSRs[i].Data = binary.LittleEndian.Uint64(b[4:])
		b = b[12:]
	}
	leaves, b, err := count(b, MaxCPUIDLeaves, 28, "CPUID leaves")
	if err != nil {
		return fmt.Errorf("vCPU %d state: %w", head.ID, err)
	}
	if leaves > 0 {
		st.CPUID = make([]kvm.CPUIDEntry, leaves)
	}
	for i := range st.CPUID {
		e := &st.CPUID[i]
		for k, f := range [...]*uint32{&e.Function, &e.Index, &e.Flags, &e.EAX, &e.EBX, &e.ECX, &e.EDX} {
			*f = binary.LittleEndian.Uint32(b[4*k:])
		}
		b = b[28:]
	}
	if len(b) != 0 {
		return fmt.Errorf("vCPU %d state: %d bytes after the CPUID leaves", head.ID, len(b))
	}
	*s = st
	return nil
}

// count reads a u32 count of records of size bytes each and checks that
// they are all there and at most max.
func count(b []byte, max, size int, what string) (int, []byte, error) {
	if len(b) < 4 {
		return 0, nil, fmt.Errorf("the block ends before the count of %s", what)
	}
	n := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if n > uint32(max) {
		return 0, nil, fmt.Errorf("%d %s, at most %d", n, what, max)
	}
	if len(b) < int(n)*size {
		return 0, nil, fmt.Errorf("%d %s promised, %d bytes left", n, what, len(b))
	}
	return int(n), b, nil
}

func appendXSave(b []byte, x *kvm.XSave) []byte {
	for _, v := range x.Region {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

func decodeXSave(b []byte, x *kvm.XSave) (int, error) {
	n := 4 * len(x.Region)
	if len(b) < n {
		return 0, fmt.Errorf("XSAVE area: %d bytes left, want %d", len(b), n)
	}
	for i := range x.Region {
		x.Region[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return n, nil
}
