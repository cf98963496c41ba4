package mmio_test

import (
	"encoding/binary"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
	"github.com/voltvmm/volt/vmm/virtio/rng"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

// op encodes one register access for FuzzRegisters: 8 bytes, kind
// (bit 0: write; bits 1-2: width 1, 2, 4 or 8), offset (12 bits) and value.
func op(write bool, width int, off uint16, v uint32) []byte {
	b := make([]byte, 8)
	k := map[int]byte{1: 0, 2: 1, 4: 2, 8: 3}[width] << 1
	if write {
		k |= 1
	}
	b[0] = k
	binary.LittleEndian.PutUint16(b[1:], off)
	binary.LittleEndian.PutUint32(b[3:], v)
	return b
}

func ops(list ...[]byte) []byte {
	var b []byte
	for _, o := range list {
		b = append(b, o...)
	}
	return b
}

// FuzzRegisters drives the transport of a real device (virtio-rng) with
// random sequences of register reads and writes, over guest memory filled
// with the input too (so queues point at garbage). The transport may refuse
// things or break the device, but must never panic or hang, must keep its
// status and negotiated features consistent, and must stop its worker on
// reset and Close.
func FuzzRegisters(f *testing.F) {
	// A full Linux bring-up of queue 0 at 0x10000/0x11000/0x12000, a
	// notify, a reset, and junk.
	linux := ops(
		op(false, 4, 0x000, 0), op(true, 4, 0x070, 0), op(true, 4, 0x070, 1), op(true, 4, 0x070, 3),
		op(true, 4, 0x014, 1), op(false, 4, 0x010, 0), op(true, 4, 0x024, 1), op(true, 4, 0x020, 1),
		op(true, 4, 0x024, 0), op(true, 4, 0x020, 0x30000000), op(true, 4, 0x070, 11), op(false, 4, 0x070, 0),
		op(true, 4, 0x030, 0), op(false, 4, 0x034, 0), op(true, 4, 0x038, 16),
		op(true, 4, 0x080, 0x10000), op(true, 4, 0x090, 0x11000), op(true, 4, 0x0a0, 0x12000),
		op(true, 4, 0x044, 1), op(true, 4, 0x070, 15), op(true, 4, 0x050, 0), op(false, 4, 0x060, 0),
		op(true, 4, 0x064, 3), op(true, 4, 0x044, 0), op(true, 4, 0x070, 0),
	)
	f.Add(linux, []byte{})
	f.Add(ops(op(true, 1, 0x070, 15), op(true, 8, 0x100, 0xffffffff), op(false, 2, 0xffe, 0)), []byte{1, 2, 3})
	f.Add(ops(op(true, 4, 0x070, 0xff), op(true, 4, 0x050, 7), op(true, 4, 0x030, 0xffffffff), op(false, 4, 0x034, 0)), []byte{})

	mem, err := virtiotest.NewMemory(1 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	f.Fuzz(func(t *testing.T, seq, guest []byte) {
		mem.Zero(0, 1<<20)
		mem.Write(0x10000, guest[:min(len(guest), 0x10000)])
		dev, err := rng.New(rng.Config{})
		if err != nil {
			t.Fatal(err)
		}
		irq := virtiotest.NewTrigger()
		tr, err := mmio.New(dev, mmio.Config{Memory: mem, IRQ: irq, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		var buf [8]byte
		for len(seq) >= 8 {
			kind, off, v := seq[0], binary.LittleEndian.Uint16(seq[1:])&0xfff, binary.LittleEndian.Uint32(seq[3:])
			seq = seq[8:]
			width := 1 << ((kind >> 1) & 3)
			if int(off)+width > mmio.Size {
				continue
			}
			if kind&1 != 0 {
				binary.LittleEndian.PutUint64(buf[:], uint64(v))
				tr.Write(uint64(off), buf[:width])
			} else {
				tr.Read(uint64(off), buf[:width])
			}
		}
		var st [4]byte
		tr.Read(0x070, st[:])
		status := binary.LittleEndian.Uint32(st[:])
		if status&^0xcf != 0 {
			t.Fatalf("status %#x has undefined bits", status)
		}
		tr.Pause()
		s, err := tr.State()
		if err != nil {
			t.Fatal(err)
		}
		if s.Status&virtio.StatusFeaturesOK != 0 && (s.DriverFeatures&^dev.Features() != 0 || s.DriverFeatures&virtio.FeatureVersion1 == 0) {
			t.Fatalf("FEATURES_OK with features %#x (offered %#x)", s.DriverFeatures, dev.Features())
		}
		// The saved state restores into a fresh transport, as a snapshot
		// of this device would.
		tr2, err := mmio.New(dev, mmio.Config{Memory: mem, IRQ: irq, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		// (Guest memory may hold an avail.idx the worker had no time to
		// reject before the pause; the restore rejects it instead.)
		if err := tr2.Restore(s); err != nil && s.Status&virtio.StatusDriverOK != 0 && s.Status&virtio.StatusDeviceNeedsReset == 0 && !strings.Contains(err.Error(), "avail.idx") {
			t.Fatalf("state of a live device does not restore: %v\n%+v", err, s)
		}
		closed := make(chan error, 2)
		go func() { closed <- tr.Close(); closed <- tr2.Close() }()
		for range 2 {
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close hung")
			}
		}
	})
}
