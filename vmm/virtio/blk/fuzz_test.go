package blk

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

const fuzzDisk = 64 << 10

// FuzzRequest sends one request of random header, layout and payload
// through a queue to the device's request handler, synchronously. Whatever
// the input: no panic, the worker's handler never fails, the answer is
// placed in the last writable byte and is a defined status, the disk keeps
// its size, and a successful read returns exactly the disk's bytes.
func FuzzRequest(f *testing.F) {
	hdr := func(typ uint32, sector uint64) []byte {
		h := make([]byte, 16)
		binary.LittleEndian.PutUint32(h, typ)
		binary.LittleEndian.PutUint64(h[8:], sector)
		return h
	}
	// layout: pairs of (kind, size/16): kind&1 writable.
	f.Add(hdr(reqIn, 4), []byte{1, 32, 1, 0}, []byte{})
	f.Add(hdr(reqOut, 100), []byte{0, 32, 1, 0}, bytes.Repeat([]byte{7}, 512))
	f.Add(hdr(reqGetID, 0), []byte{1, 1, 1, 0}, []byte{})
	f.Add(hdr(reqFlush, 0), []byte{1, 0}, []byte{})
	f.Add(hdr(reqDiscard, 0), []byte{0, 1, 1, 0}, seg(1, 2, 0))
	f.Add(hdr(reqWriteZeroes, 0), []byte{0, 2, 1, 0}, append(seg(1, 2, 1), seg(120, 8, 0)...))
	f.Add(hdr(reqIn, 127), []byte{1, 64, 1, 0}, []byte{})
	f.Add([]byte{1, 2, 3}, []byte{1, 0}, []byte{})

	path := diskImage(f, tmpfsDir(f), fuzzDisk)
	file, err := OpenFile(path, FileOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { file.Close() })
	dev, err := New(Config{Backend: file, ID: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	mem, err := virtiotest.NewMemory(8 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	f.Fuzz(func(t *testing.T, header, layout, payload []byte) {
		ring, err := virtiotest.NewRing(mem, 0x10000, QueueSize, 0x100000, 8<<20)
		if err != nil {
			t.Fatal(err)
		}
		q := virtio.NewQueue(0, QueueSize)
		ring.Configure(q)
		if err := q.Activate(mem, dev.Features(), nil); err != nil {
			t.Fatal(err)
		}
		if err := dev.Activate(virtio.Activation{Features: dev.Features(), Memory: mem, Queues: []*virtio.Queue{q}, Notify: []<-chan struct{}{nil}, Log: quiet}); err != nil {
			t.Fatal(err)
		}
		// The header and payload are the readable part; layout adds
		// further readable or writable segments.
		s := virtiotest.Segments{Readable: [][]byte{header}}
		if len(payload) > 0 {
			s.Readable = append(s.Readable, payload)
		}
		var writable uint32
		for i := 0; i+1 < len(layout) && i < 16; i += 2 {
			n := uint32(layout[i+1]) * 16
			if layout[i]&1 == 0 && len(s.Writable) == 0 {
				s.Readable = append(s.Readable, make([]byte, n))
			} else {
				s.Writable = append(s.Writable, n)
				writable += n
			}
		}
		if _, err := ring.Add(s); err != nil {
			t.Skip(err)
		}
		c, err := q.Pop()
		if err != nil || c == nil {
			t.Fatalf("Pop = %v, %v", c, err)
		}
		readable := c.ReadableLen()
		written, wait, err := dev.handle(c)
		if err != nil || wait != 0 {
			t.Fatalf("handle = %d, %v, %v", written, wait, err)
		}
		if err := q.PushUsed(c.Head, written); err != nil {
			t.Fatal(err)
		}
		u, ok, err := ring.PopUsed()
		if err != nil || !ok {
			t.Fatalf("PopUsed = %v, %v", ok, err)
		}
		if writable == 0 {
			if u.Len != 0 {
				t.Fatalf("statusless request answered with %d bytes", u.Len)
			}
			return
		}
		if u.Len != writable {
			t.Fatalf("used length %d, writable %d", u.Len, writable)
		}
		status := u.Data[len(u.Data)-1]
		if status > statusUnsupp {
			t.Fatalf("status %d", status)
		}
		if info, err := os.Stat(path); err != nil || info.Size() != fuzzDisk {
			t.Fatalf("disk size changed: %v %v", info.Size(), err)
		}
		if len(header) >= 16 && status == statusOK {
			typ, sector := parseHeader(header)
			if typ == reqIn && writable > 1 {
				want := make([]byte, writable-1)
				if _, err := file.ReadAt(want, int64(sector)*SectorSize); err != nil {
					t.Fatalf("successful read at sector %d of a %d-sector disk: %v", sector, fuzzDisk/512, err)
				}
				if !bytes.Equal(u.Data[:writable-1], want) {
					t.Fatalf("read of sector %d returned other bytes than the disk holds", sector)
				}
			}
			if typ == reqOut && (sector > fuzzDisk/SectorSize || uint64(sector)*SectorSize+uint64(readable-16) > fuzzDisk) {
				t.Fatalf("write at sector %d of %d bytes succeeded past the end", sector, readable-16)
			}
		}
	})
}
