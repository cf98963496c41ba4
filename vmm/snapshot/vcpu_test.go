package snapshot

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/voltvmm/volt/vmm/kvm"
)

// fullVCPU fills every field of a vCPU state that the block carries, each
// with its own values, so that a field lost or moved shows.
func fullVCPU(r *rand.Rand) VCPUState {
	s := VCPUState{ID: 1, MPState: 3, TSCKHz: 2_400_000}
	fill := func(v reflect.Value) {
		var walk func(v reflect.Value)
		walk = func(v reflect.Value) {
			switch v.Kind() {
			case reflect.Struct:
				for i := range v.NumField() {
					if v.Type().Field(i).Name != "_" {
						walk(v.Field(i))
					}
				}
			case reflect.Array:
				for i := range v.Len() {
					walk(v.Index(i))
				}
			case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
				v.SetUint(r.Uint64() >> (64 - 8*v.Type().Size()))
			case reflect.Int64:
				v.SetInt(int64(r.Uint64()))
			}
		}
		walk(v)
	}
	for _, p := range s.fixedParts() {
		fill(reflect.ValueOf(p).Elem())
	}
	for i := range 7 {
		s.MSRs = append(s.MSRs, kvm.MSR{Index: 0xc000_0080 + uint32(i), Data: r.Uint64()})
	}
	for i := range 5 {
		e := kvm.CPUIDEntry{Function: uint32(i), Index: r.Uint32(), Flags: r.Uint32(), EAX: r.Uint32(), EBX: r.Uint32(), ECX: r.Uint32(), EDX: r.Uint32()}
		s.CPUID = append(s.CPUID, e)
	}
	return s
}

func TestVCPUBlockRoundTripsEveryField(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		in := fullVCPU(r)
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `"Arch":`) || strings.Contains(string(b), `"Sregs"`) {
			t.Fatalf("not the 2.2 form: %.200s", b)
		}
		var out VCPUState
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(in, out) {
			t.Fatalf("round trip changed the state:\n in %+v\nout %+v", in, out)
		}
	}
}

// TestVCPUObjectsOfOlderFormatsStillDecode: a 2.0 or 2.1 file's vCPU
// objects decode to the same state.
func TestVCPUObjectsOfOlderFormatsStillDecode(t *testing.T) {
	in := fullVCPU(rand.New(rand.NewPCG(3, 4)))
	old, err := json.Marshal(vcpuObjects(in))
	if err != nil {
		t.Fatal(err)
	}
	var out VCPUState
	if err := json.Unmarshal(old, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("older form decoded differently:\n in %+v\nout %+v", in, out)
	}
}

func TestVCPUBlockRejectsDamage(t *testing.T) {
	in := fullVCPU(rand.New(rand.NewPCG(5, 6)))
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var j vcpuJSON
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatal(err)
	}
	arch := j.Arch
	fixed := len(arch) - 4 - 12*len(in.MSRs) - 4 - 28*len(in.CPUID)
	msrCount := fixed
	cpuidCount := fixed + 4 + 12*len(in.MSRs)
	with := func(f func([]byte) []byte) string {
		k := j
		k.Arch = f(append([]byte(nil), arch...))
		out, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	le32 := func(b []byte, off int, v uint32) []byte {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		return b
	}
	for name, data := range map[string]string{
		"no block":             `{"ID":0,"MPState":0,"TSCKHz":0}`,
		"unknown field":        `{"ID":0,"Arch":"AAAA","Extra":1}`,
		"cut in the XSAVE":     with(func(b []byte) []byte { return b[:500] }),
		"cut before a count":   with(func(b []byte) []byte { return b[:fixed+2] }),
		"one byte too many":    with(func(b []byte) []byte { return append(b, 0) }),
		"one leaf missing":     with(func(b []byte) []byte { return b[:len(b)-28] }),
		"MSR count too large":  with(func(b []byte) []byte { return le32(b, msrCount, MaxMSRs+1) }),
		"MSR count past end":   with(func(b []byte) []byte { return le32(b, msrCount, 1000) }),
		"leaf count too large": with(func(b []byte) []byte { return le32(b, cpuidCount, MaxCPUIDLeaves+1) }),
		"old form, bad field":  `{"ID":0,"Regs":{"RAX":"x"}}`,
	} {
		var out VCPUState
		if err := json.Unmarshal([]byte(data), &out); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
	}
}

// BenchmarkDecodeState decodes a real state file of the probe (1 vCPU) in
// the 2.0 form (vCPU objects), the 2.2 form (each vCPU's block as base64 in
// the JSON) and as this package writes it (2.3: the blocks in the binary
// section).
func BenchmarkDecodeState(b *testing.B) {
	path := os.Getenv("VOLT_STATE")
	if path == "" {
		b.Skip("VOLT_STATE names no state file of a probe snapshot")
	}
	st, err := ReadStateFile(path)
	if err != nil {
		b.Fatal(err)
	}
	section, err := Encode(st)
	if err != nil {
		b.Fatal(err)
	}
	blocks, err := json.Marshal(st)
	if err != nil {
		b.Fatal(err)
	}
	type oldState struct {
		VMState
		VCPUs []vcpuObjects
	}
	payload, err := json.Marshal(oldState{VMState: *st, VCPUs: func() []vcpuObjects {
		var o []vcpuObjects
		for _, c := range st.VCPUs {
			o = append(o, vcpuObjects(c))
		}
		return o
	}()})
	if err != nil {
		b.Fatal(err)
	}
	objects := wrap(payload)
	for _, c := range []struct {
		name string
		file []byte
	}{{"objects", objects}, {"json-block", wrapAs(2, blocks, nil)}, {"section", section}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.file)))
			for b.Loop() {
				if _, err := Decode(c.file); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
