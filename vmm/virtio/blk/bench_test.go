package blk

import (
	"fmt"
	"os"
	"testing"

	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
	"golang.org/x/sys/unix"
)

// BenchmarkRequest is the host-side cost of one 4 KiB request through the
// whole device path: the driver side (virtiotest) publishes a chain and
// notifies, the worker wakes, validates the chain, parses and checks the
// request, does the I/O straight into guest memory, writes the status,
// publishes the used entry and raises the interrupt, and the driver side
// wakes on it (reaping the used entry without copying its data). The disk
// is a file on tmpfs, so the I/O is a memory copy in
// the kernel. BenchmarkPread is the same I/O done directly, the floor of
// the comparison.
func BenchmarkRequest(b *testing.B) {
	for _, op := range []string{"read", "write"} {
		for _, size := range []uint32{4096, 64 << 10} {
			b.Run(fmt.Sprintf("%s-%dK", op, size>>10), func(b *testing.B) {
				d := newDisk(b, FileOptions{}, Config{})
				sectors := uint64(diskSize / SectorSize)
				data := make([]byte, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					sector := uint64(i) * uint64(size/SectorSize) % (sectors - uint64(size/SectorSize))
					var s virtiotest.Segments
					if op == "read" {
						s = virtiotest.Segments{Readable: [][]byte{header(reqIn, sector)}, Writable: []uint32{size, 1}}
					} else {
						s = virtiotest.Segments{Readable: [][]byte{header(reqOut, sector), data}, Writable: []uint32{1}}
					}
					if _, err := d.Rings[0].Add(s); err != nil {
						b.Fatal(err)
					}
					d.Kick(0)
					d.WaitEntry(0)
					d.Rings[0].ResetHeap()
				}
				b.StopTimer()
				if err := d.Stop(); err != nil {
					b.Fatal(err)
				}
				if st := d.dev.Stats(); st.Errors != 0 {
					b.Fatalf("%d requests failed", st.Errors)
				}
			})
		}
	}
}

func BenchmarkPread(b *testing.B) {
	for _, op := range []string{"read", "write"} {
		b.Run(op+"-4K", func(b *testing.B) {
			path := diskImage(b, tmpfsDir(b), diskSize)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 4096)
			fd := int(f.Fd())
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				off := int64(i) * 4096 % (diskSize - 4096)
				if op == "read" {
					_, err = unix.Pread(fd, buf, off)
				} else {
					_, err = unix.Pwrite(fd, buf, off)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandle is the device path of BenchmarkRequest without the
// goroutine hand-offs: publish, pop and validate, handle, push, signal and
// reap, all on the benchmark's goroutine. It is the CPU cost per request,
// less sensitive to a loaded machine's scheduling than BenchmarkRequest.
func BenchmarkHandle(b *testing.B) {
	for _, op := range []string{"read", "write"} {
		b.Run(op+"-4K", func(b *testing.B) {
			path := diskImage(b, tmpfsDir(b), diskSize)
			f, err := OpenFile(path, FileOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			dev, err := New(Config{Backend: f})
			if err != nil {
				b.Fatal(err)
			}
			mem, err := virtiotest.NewMemory(8 << 20)
			if err != nil {
				b.Fatal(err)
			}
			defer mem.Close()
			ring, err := virtiotest.NewRing(mem, 0x10000, QueueSize, 0x100000, 8<<20)
			if err != nil {
				b.Fatal(err)
			}
			q := virtio.NewQueue(0, QueueSize)
			ring.Configure(q)
			irq := &virtiotest.Notifications{}
			if err := q.Activate(mem, dev.Features(), irq); err != nil {
				b.Fatal(err)
			}
			if err := dev.Activate(virtio.Activation{Features: dev.Features(), Memory: mem, Queues: []*virtio.Queue{q}, Notify: []<-chan struct{}{nil}, Interrupt: irq}); err != nil {
				b.Fatal(err)
			}
			data := make([]byte, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sector := uint64(i) * 8 % (diskSize/SectorSize - 8)
				var s virtiotest.Segments
				if op == "read" {
					s = virtiotest.Segments{Readable: [][]byte{header(reqIn, sector)}, Writable: []uint32{4096, 1}}
				} else {
					s = virtiotest.Segments{Readable: [][]byte{header(reqOut, sector), data}, Writable: []uint32{1}}
				}
				if _, err := ring.Add(s); err != nil {
					b.Fatal(err)
				}
				if _, err := dev.drain(q); err != nil {
					b.Fatal(err)
				}
				if _, ok, err := ring.PopUsedEntry(); !ok || err != nil {
					b.Fatalf("not used: %v", err)
				}
				ring.ResetHeap()
			}
		})
	}
}
