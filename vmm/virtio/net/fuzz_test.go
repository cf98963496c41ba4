package net

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"golang.org/x/sys/unix"
)

// The fuzz targets build descriptor chains from the fuzzer's bytes in a
// small fake guest memory, pop them through a real virtio.Queue and hand
// them to the device's transmit or receive path.

const (
	fzMemSize   = 1 << 20
	fzQueueSize = 8
	fzDesc      = 0x0
	fzAvail     = 0x100
	fzUsed      = 0x200
	fzData      = 0x1000
)

// fzFeatures picks a negotiated feature set from one byte.
func fzFeatures(b byte) uint64 {
	f := uint64(virtio.FeatureVersion1)
	for i, bit := range []uint64{FeatureCsum, FeatureHostTSO4, FeatureHostTSO6, FeatureHostECN,
		FeatureGuestCsum, FeatureGuestTSO4, FeatureMrgRxbuf, virtio.FeatureIndirectDesc} {
		if b&(1<<i) != 0 {
			f |= bit
		}
	}
	return f
}

// fzChain writes up to fzQueueSize descriptors described by spec (8 bytes
// each: address offset, length, flags, next) and publishes descriptor 0.
func fzChain(t *testing.T, mem *memory.Memory, spec []byte, features uint64) *virtio.Queue {
	clear(mem.Mapping()[:fzData])
	for i := 0; i < fzQueueSize && len(spec) >= 8; i++ {
		addr := fzData + uint64(binary.LittleEndian.Uint16(spec[0:]))*16
		length := uint32(binary.LittleEndian.Uint16(spec[2:]))
		if spec[4]&0x80 != 0 {
			length <<= 2 // lengths past 64 KiB too
		}
		d := memory.GuestAddr(fzDesc + 16*i)
		mem.WriteUint64(d, addr)
		mem.WriteUint32(d+8, length)
		mem.WriteUint16(d+12, uint16(spec[4]&0x7))
		mem.WriteUint16(d+14, uint16(spec[5]))
		spec = spec[8:]
	}
	mem.WriteUint16(fzAvail+4, 0)
	mem.WriteUint16(fzAvail+2, 1)
	q := virtio.NewQueue(0, fzQueueSize)
	q.SetSize(fzQueueSize)
	q.SetDescTable(fzDesc)
	q.SetAvailRing(fzAvail)
	q.SetUsedRing(fzUsed)
	q.SetReady(true)
	if err := q.Activate(mem, features, nil); err != nil {
		t.Fatal(err)
	}
	return q
}

func fzMemory(f *testing.F) *memory.Memory {
	mem, err := memory.New(memory.Config{Size: fzMemSize})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	return mem
}

// fzDevice returns a device over a socket pair and the peer's descriptor
// (non-blocking), from which the target reads what the device sent.
func fzDevice(f *testing.F) (*Device, *pairBackend, int) {
	b, peer := newPair(f, fullOffload)
	d, err := NewWithBackend(Config{ID: "fuzz0", MAC: testMAC, Log: slog.New(slog.DiscardHandler)}, b)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	rc, err := peer.SyscallConn()
	if err != nil {
		f.Fatal(err)
	}
	fd := -1
	rc.Control(func(u uintptr) { fd = int(u) })
	return d, b, fd
}

func desc(off, length uint16, flags, next byte) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint16(b, off)
	binary.LittleEndian.PutUint16(b[2:], length)
	b[4], b[5] = flags, next
	return b
}

// fzWritable is every range a descriptor of spec marks device-writable: a
// superset of what the device may write.
func fzWritable(spec []byte) [][2]uint64 {
	var out [][2]uint64
	for i := 0; i < fzQueueSize && len(spec) >= 8; i++ {
		addr := fzData + uint64(binary.LittleEndian.Uint16(spec[0:]))*16
		length := uint64(binary.LittleEndian.Uint16(spec[2:]))
		if spec[4]&0x80 != 0 {
			length <<= 2
		}
		if spec[4]&2 != 0 {
			out = append(out, [2]uint64{addr, addr + length})
		}
		spec = spec[8:]
	}
	return out
}

// FuzzTxChain: any chain the queue accepts must either be dropped with a
// counter or reach the backend as exactly its readable bytes, behind a
// header that respects the negotiated features.
func FuzzTxChain(f *testing.F) {
	mem := fzMemory(f)
	d, _, peer := fzDevice(f)
	seedHdr := make([]byte, HeaderSize)
	(Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}).Encode(seedHdr)
	f.Add(byte(0xff), append(desc(0, 12, 1, 1), desc(1, 1500, 0, 0)...), seedHdr)
	f.Add(byte(0), desc(0, 1514, 0, 0), make([]byte, 64))
	f.Add(byte(1), append(desc(0, 12, 1, 1), desc(1, 100, 2, 0)...), seedHdr)
	f.Add(byte(0x80), desc(0, 32, 4, 0), seedHdr)                             // indirect
	f.Add(byte(3), append(desc(0, 12, 1, 0), desc(1, 100, 1, 0)...), seedHdr) // loop
	buf := make([]byte, MaxPacketLen+1)
	f.Fuzz(func(t *testing.T, feat byte, spec, content []byte) {
		features := fzFeatures(feat)
		clear(mem.Mapping()[fzData:])
		copy(mem.Mapping()[fzData:], content)
		q := fzChain(t, mem, spec, features)
		c, err := q.Pop()
		if err != nil || c == nil {
			return // the queue refused the chain: the device would be broken
		}
		d.acked = features
		tx := newTxPath(d, q, mem, nil, nil)
		before := d.Metrics()
		tx.send(c)
		after := d.Metrics()
		n, err := unix.Read(peer, buf)
		if err == unix.EAGAIN {
			if after.TxFrames != before.TxFrames || after.TxDroppedMalformed+after.TxDroppedHeader+after.TxDroppedBackend == before.TxDroppedMalformed+before.TxDroppedHeader+before.TxDroppedBackend {
				t.Fatalf("frame neither sent nor counted as dropped: %+v -> %+v", before, after)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if after.TxFrames != before.TxFrames+1 {
			t.Fatalf("a frame reached the backend without being counted")
		}
		if n != int(c.ReadableLen()) || c.WritableLen() != 0 {
			t.Fatalf("backend got %d bytes from a chain of %d readable, %d writable", n, c.ReadableLen(), c.WritableLen())
		}
		h, _ := DecodeHeader(buf[:n])
		if _, err := CheckTxHeader(h, n-HeaderSize, features); err != nil {
			t.Fatalf("sent a header the check refuses: %+v: %v", h, err)
		}
		var want []byte
		for _, b := range c.Readable() {
			s, _ := mem.Slice(b.Addr, uint64(b.Len))
			want = append(want, s...)
		}
		if !bytes.Equal(buf[HeaderSize:n], want[HeaderSize:]) {
			t.Fatal("frame bytes differ from the chain's")
		}
	})
}

// FuzzRxChain: a frame from the host and any receive chain the queue
// accepts: the device writes only inside writable buffers, reports in the
// used ring exactly what it wrote, and delivers the frame whole or not at
// all.
func FuzzRxChain(f *testing.F) {
	sentinel := bytes.Repeat([]byte{0xaa}, 4096)
	mem := fzMemory(f)
	d, b, peer := fzDevice(f)
	f.Add(byte(0x40), desc(0, 4096, 2, 0), uint16(1000), []byte{0, 0})
	f.Add(byte(0), append(desc(0, 6, 3, 1), desc(10, 2000, 2, 0)...), uint16(1500), []byte{2, 0})
	f.Add(byte(0), desc(0, 100, 2, 0), uint16(1500), []byte{0})
	f.Add(byte(0x11), desc(0, 8, 2, 0), uint16(60), []byte{1, 1, 0, 0, 0x10, 0})
	f.Add(byte(0), append(desc(0, 64, 0, 1), desc(10, 2000, 2, 0)...), uint16(64), []byte{})
	f.Fuzz(func(t *testing.T, feat byte, spec []byte, frameLen uint16, hdr []byte) {
		features := fzFeatures(feat)
		m := mem.Mapping()
		for i := fzData; i < len(m); i += len(sentinel) {
			copy(m[i:], sentinel)
		}
		q := fzChain(t, mem, spec, features)
		pkt := make([]byte, HeaderSize+int(frameLen))
		copy(pkt, hdr)
		for i := HeaderSize; i < len(pkt); i++ {
			pkt[i] = byte(i)
		}
		if _, err := unix.Write(peer, pkt); err != nil {
			t.Skipf("socket pair refused %d bytes: %v", len(pkt), err)
		}
		d.acked = features
		rx := newRxPath(d, q, mem, nil, nil)
		defer func() {
			for {
				if _, err := b.Read(rx.buf); err != nil {
					break
				}
			}
		}()
		if err := rx.readFrame(); err != nil {
			t.Fatalf("read: %v", err)
		}
		if rx.pending == 0 {
			return // dropped: short, or an offload not negotiated
		}
		dropsBefore := d.Metrics().RxDroppedTooBig
		done, err := rx.deliver()
		if err != nil {
			return // the chain broke the rules: the device would be broken
		}
		allowed := fzWritable(spec)
		for a := fzData; a < len(m); a++ {
			if a%len(sentinel) == 0 && a+len(sentinel) <= len(m) && bytes.Equal(m[a:a+len(sentinel)], sentinel) {
				a += len(sentinel) - 1
				continue
			}
			if m[a] == 0xaa {
				continue
			}
			ok := false
			for _, r := range allowed {
				ok = ok || (uint64(a) >= r[0] && uint64(a) < r[1])
			}
			if !ok {
				t.Fatalf("device wrote guest memory at %#x, outside every writable buffer", a)
			}
		}
		used := readUsed(mem)
		switch {
		case len(used) > 1:
			t.Fatalf("%d used entries for one published chain", len(used))
		case len(used) == 1:
			if int(used[0].len) != len(pkt) {
				t.Fatalf("used length %d for a %d-byte frame", used[0].len, len(pkt))
			}
			// Walk the chain again to read back what the guest got.
			q2 := fzChain(t, mem, spec, features)
			c, err := q2.Pop()
			if err != nil || c == nil {
				t.Fatalf("chain popped once cannot be popped again: %v", err)
			}
			if overlapping(c.Writable()) {
				return // the guest's own buffers overwrite each other
			}
			var got []byte
			for _, wb := range c.Writable() {
				s, _ := mem.Slice(wb.Addr, uint64(wb.Len))
				got = append(got, s...)
			}
			got = got[:len(pkt)]
			if !bytes.Equal(got[HeaderSize:], pkt[HeaderSize:]) {
				t.Fatal("delivered bytes differ from the frame")
			}
			if nb := binary.LittleEndian.Uint16(got[10:]); nb != 1 {
				t.Fatalf("num_buffers %d for a one-buffer frame", nb)
			}
		case done && d.Metrics().RxDroppedTooBig == dropsBefore:
			t.Fatal("frame neither delivered nor counted as dropped")
		}
	})
}

func overlapping(bufs []virtio.Buffer) bool {
	for i, a := range bufs {
		for _, b := range bufs[i+1:] {
			if a.Addr < b.Addr+memory.GuestAddr(b.Len) && b.Addr < a.Addr+memory.GuestAddr(a.Len) {
				return true
			}
		}
	}
	return false
}

// readUsed returns the used ring's entries.
func readUsed(mem *memory.Memory) []usedEntry {
	idx, _ := mem.ReadUint16(fzUsed + 2)
	var out []usedEntry
	for i := range idx {
		e := memory.GuestAddr(fzUsed + 4 + 8*int(i%fzQueueSize))
		id, _ := mem.ReadUint32(e)
		n, _ := mem.ReadUint32(e + 4)
		out = append(out, usedEntry{uint16(id), n})
	}
	return out
}
