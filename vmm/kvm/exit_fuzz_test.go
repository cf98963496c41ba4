package kvm

import (
	"encoding/binary"
	"testing"
)

// FuzzDecodeExit decodes arbitrary kvm_run pages. The kernel writes them,
// but the decoder must still never slice outside the page, whatever the
// exit reason, data offset or lengths say.
func FuzzDecodeExit(f *testing.F) {
	io := make([]byte, 64)
	binary.LittleEndian.PutUint32(io[runExitReason:], uint32(ExitIO))
	io[runUnion], io[runUnion+1] = 1, 1
	binary.LittleEndian.PutUint16(io[runUnion+2:], 0x3f8)
	binary.LittleEndian.PutUint32(io[runUnion+4:], 1)
	binary.LittleEndian.PutUint64(io[runUnion+8:], 4096-8)
	f.Add(io)
	mmio := make([]byte, 64)
	binary.LittleEndian.PutUint32(mmio[runExitReason:], uint32(ExitMMIO))
	mmio[runUnion+16] = 4
	f.Add(mmio)
	internal := make([]byte, 64)
	binary.LittleEndian.PutUint32(internal[runExitReason:], uint32(ExitInternalError))
	internal[runUnion+4] = 0xff
	f.Add(internal)
	f.Fuzz(func(t *testing.T, b []byte) {
		run := make([]byte, 4096) // kvm_run is at least a page
		copy(run, b)
		e, err := decodeExit(run)
		if err != nil {
			return
		}
		switch x := e.(type) {
		case IOExit:
			if len(x.Data) != x.Size*x.Count || x.Size == 0 {
				t.Fatalf("IO exit data of %d bytes for %d×%d", len(x.Data), x.Count, x.Size)
			}
		case MMIOExit:
			if len(x.Data) > 8 {
				t.Fatalf("MMIO exit of %d bytes", len(x.Data))
			}
		case InternalErrorExit:
			if len(x.Data) > 16 {
				t.Fatalf("internal error with %d data words", len(x.Data))
			}
		}
	})
}
