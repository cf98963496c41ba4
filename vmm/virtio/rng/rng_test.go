package rng

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

func TestRandomBytesFillBuffers(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := virtiotest.NewHarness(t, d, virtio.QueueFeatures)
	var prev []byte
	for _, size := range []uint32{1, 64, 4096, 100000} {
		if _, err := h.Rings[0].Add(virtiotest.Segments{Writable: []uint32{size / 2, size - size/2}}); err != nil {
			t.Fatal(err)
		}
		h.Kick(0)
		u := h.Wait(0)
		want := min(size, DefaultMaxRequest)
		if u.Len != want {
			t.Fatalf("buffer of %d: %d bytes written, want %d", size, u.Len, want)
		}
		if size >= 64 && (bytes.Equal(u.Data, make([]byte, len(u.Data))) || bytes.Equal(u.Data[:64], prev)) {
			t.Fatalf("buffer of %d: data is not random", size)
		}
		if size >= 64 {
			prev = append([]byte(nil), u.Data[:64]...)
		}
	}
	if h.IRQ.UsedBuffers.Load() == 0 {
		t.Fatal("no interrupt")
	}
}

func TestReadableBuffersAreIgnored(t *testing.T) {
	d, _ := New(Config{})
	h := virtiotest.NewHarness(t, d, virtio.QueueFeatures)
	h.Rings[0].Add(virtiotest.Segments{Readable: [][]byte{[]byte("junk")}, Writable: []uint32{16}})
	h.Rings[0].Add(virtiotest.Segments{Readable: [][]byte{[]byte("only readable")}})
	h.Kick(0)
	if u := h.Wait(0); u.Len != 16 {
		t.Fatalf("written %d", u.Len)
	}
	if u := h.Wait(0); u.Len != 0 {
		t.Fatalf("readable-only request: written %d", u.Len)
	}
}

func TestGetrandomFailureBreaksTheDevice(t *testing.T) {
	d, _ := New(Config{Random: func([]byte) (int, error) { return 0, errors.New("no entropy") }})
	h := virtiotest.NewHarness(t, d, virtio.QueueFeatures)
	h.Rings[0].Add(virtiotest.Segments{Writable: []uint32{16}})
	h.Kick(0)
	err, done := h.Done(10 * time.Second)
	if !done || err == nil {
		t.Fatalf("Run = %v (exited %v), want an error after getrandom failed", err, done)
	}
}

// Rate-limited requests complete later, without any new notification: the
// limiter's timer re-arms the queue.
func TestRateLimitedRequestsComplete(t *testing.T) {
	d, err := New(Config{RateLimit: ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 1, RefillTime: 20 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	h := virtiotest.NewHarness(t, d, virtio.QueueFeatures)
	const n = 5
	for i := 0; i < n; i++ {
		h.Rings[0].Add(virtiotest.Segments{Writable: []uint32{8}})
	}
	h.Kick(0)
	for i := 0; i < n; i++ {
		if u := h.Wait(0); u.Len != 8 {
			t.Fatalf("request %d: %d bytes", i, u.Len)
		}
	}
}

func TestPauseLeavesNoChainBehind(t *testing.T) {
	d, _ := New(Config{RateLimit: ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 1, RefillTime: time.Hour}}})
	h := virtiotest.NewHarness(t, d, virtio.QueueFeatures)
	h.Rings[0].Add(virtiotest.Segments{Writable: []uint32{8}})
	h.Rings[0].Add(virtiotest.Segments{Writable: []uint32{8}})
	h.Kick(0)
	h.Wait(0)
	// The second request is waiting for the limiter; stopping the worker
	// must leave it counted as available, not popped and forgotten.
	time.Sleep(10 * time.Millisecond)
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if st := h.Queues[0].State(); st.NextAvail != 1 || st.NextUsed != 1 {
		t.Fatalf("after stop: next avail %d, next used %d; want 1, 1", st.NextAvail, st.NextUsed)
	}
}

// FuzzRequests sends chains with random readable and writable layouts
// (the device's whole request "format"): each completes with exactly
// min(writable, MaxRequest) bytes and the worker never fails.
func FuzzRequests(f *testing.F) {
	f.Add([]byte{0, 4, 1, 16}, uint16(100))
	f.Add([]byte{3, 255, 0}, uint16(4))
	f.Add([]byte{}, uint16(0))
	d, err := New(Config{MaxRequest: 1000})
	if err != nil {
		f.Fatal(err)
	}
	h := virtiotest.NewHarness(f, d, virtio.QueueFeatures)
	f.Fuzz(func(t *testing.T, layout []byte, max uint16) {
		h.T = t
		var seg virtiotest.Segments
		var writable uint32
		for i := 0; i+1 < len(layout) && i < 16; i += 2 {
			n := uint32(layout[i+1]) * uint32(max%64+1)
			if layout[i]&1 == 0 && len(seg.Writable) == 0 {
				seg.Readable = append(seg.Readable, make([]byte, n))
			} else {
				seg.Writable = append(seg.Writable, n)
				writable += n
			}
		}
		if len(seg.Readable)+len(seg.Writable) == 0 {
			return
		}
		h.Rings[0].ResetHeap()
		if _, err := h.Rings[0].Add(seg); err != nil {
			t.Skip(err)
		}
		h.Kick(0)
		if u := h.Wait(0); u.Len != min(writable, 1000) {
			t.Fatalf("layout %v: %d bytes written, want %d", layout, u.Len, min(writable, 1000))
		}
	})
}

func BenchmarkRequest(b *testing.B) {
	for _, size := range []uint32{64, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			d, _ := New(Config{})
			h := virtiotest.NewHarness(b, d, virtio.QueueFeatures)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := h.Rings[0].Add(virtiotest.Segments{Writable: []uint32{size}}); err != nil {
					b.Fatal(err)
				}
				h.Kick(0)
				h.WaitEntry(0)
				h.Rings[0].ResetHeap()
			}
		})
	}
}
