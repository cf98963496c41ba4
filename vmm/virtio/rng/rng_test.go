package rng

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

// harness runs a device's worker on one queue driven by virtiotest.
type harness struct {
	t      testing.TB
	mem    *memory.Memory
	ring   *virtiotest.Ring
	q      *virtio.Queue
	irq    *virtiotest.Notifications
	notify chan struct{}
	cancel context.CancelFunc
	done   chan error
}

func newHarness(t testing.TB, d *Device, features uint64) *harness {
	t.Helper()
	mem, err := virtiotest.NewMemory(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, mem: mem, irq: virtiotest.NewNotifications(), notify: make(chan struct{}, 1)}
	h.ring, err = virtiotest.NewRing(mem, 0x10000, QueueSize, 0x100000, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	h.q = virtio.NewQueue(0, QueueSize)
	h.ring.Configure(h.q)
	if err := h.q.Activate(mem, features, h.irq); err != nil {
		t.Fatal(err)
	}
	if err := d.Activate(virtio.Activation{Features: features, Memory: mem, Queues: []*virtio.Queue{h.q}, Notify: []<-chan struct{}{h.notify}, Interrupt: h.irq}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- d.Run(ctx) }()
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		mem.Close()
	})
	return h
}

func (h *harness) stop() error {
	if h.cancel == nil {
		return nil
	}
	h.cancel()
	h.cancel = nil
	return <-h.done
}

func (h *harness) kick() {
	select {
	case h.notify <- struct{}{}:
	default:
	}
}

// wait returns the next used entry, failing after a generous deadline.
func (h *harness) wait() virtiotest.Used {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, ok, err := h.ring.PopUsed()
		if err != nil {
			h.t.Fatal(err)
		}
		if ok {
			return u
		}
		if time.Now().After(deadline) {
			h.t.Fatal("request not completed")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestRandomBytesFillBuffers(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, d, virtio.QueueFeatures)
	var prev []byte
	for _, size := range []uint32{1, 64, 4096, 100000} {
		if _, err := h.ring.Add(virtiotest.Segments{Writable: []uint32{size / 2, size - size/2}}); err != nil {
			t.Fatal(err)
		}
		h.kick()
		u := h.wait()
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
	if h.irq.UsedBuffers.Load() == 0 {
		t.Fatal("no interrupt")
	}
}

func TestReadableBuffersAreIgnored(t *testing.T) {
	d, _ := New(Config{})
	h := newHarness(t, d, virtio.QueueFeatures)
	h.ring.Add(virtiotest.Segments{Readable: [][]byte{[]byte("junk")}, Writable: []uint32{16}})
	h.ring.Add(virtiotest.Segments{Readable: [][]byte{[]byte("only readable")}})
	h.kick()
	if u := h.wait(); u.Len != 16 {
		t.Fatalf("written %d", u.Len)
	}
	if u := h.wait(); u.Len != 0 {
		t.Fatalf("readable-only request: written %d", u.Len)
	}
}

func TestGetrandomFailureBreaksTheDevice(t *testing.T) {
	d, _ := New(Config{Random: func([]byte) (int, error) { return 0, errors.New("no entropy") }})
	h := newHarness(t, d, virtio.QueueFeatures)
	h.ring.Add(virtiotest.Segments{Writable: []uint32{16}})
	h.kick()
	select {
	case err := <-h.done:
		h.cancel = nil
		if err == nil {
			t.Fatal("Run returned nil after getrandom failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not fail")
	}
}

// Rate-limited requests complete later, without any new notification: the
// limiter's timer re-arms the queue.
func TestRateLimitedRequestsComplete(t *testing.T) {
	d, err := New(Config{RateLimit: ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 1, RefillTime: 20 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, d, virtio.QueueFeatures)
	const n = 5
	for i := 0; i < n; i++ {
		h.ring.Add(virtiotest.Segments{Writable: []uint32{8}})
	}
	h.kick()
	for i := 0; i < n; i++ {
		if u := h.wait(); u.Len != 8 {
			t.Fatalf("request %d: %d bytes", i, u.Len)
		}
	}
}

func TestPauseLeavesNoChainBehind(t *testing.T) {
	d, _ := New(Config{RateLimit: ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 1, RefillTime: time.Hour}}})
	h := newHarness(t, d, virtio.QueueFeatures)
	h.ring.Add(virtiotest.Segments{Writable: []uint32{8}})
	h.ring.Add(virtiotest.Segments{Writable: []uint32{8}})
	h.kick()
	h.wait()
	// The second request is waiting for the limiter; stopping the worker
	// must leave it counted as available, not popped and forgotten.
	time.Sleep(10 * time.Millisecond)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if st := h.q.State(); st.NextAvail != 1 || st.NextUsed != 1 {
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
	h := newHarness(f, d, virtio.QueueFeatures)
	f.Fuzz(func(t *testing.T, layout []byte, max uint16) {
		h.t = t
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
		h.ring.ResetHeap()
		if _, err := h.ring.Add(seg); err != nil {
			t.Skip(err)
		}
		h.kick()
		if u := h.wait(); u.Len != min(writable, 1000) {
			t.Fatalf("layout %v: %d bytes written, want %d", layout, u.Len, min(writable, 1000))
		}
	})
}

func BenchmarkRequest(b *testing.B) {
	for _, size := range []uint32{64, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			d, _ := New(Config{})
			h := newHarness(b, d, virtio.QueueFeatures)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := h.ring.Add(virtiotest.Segments{Writable: []uint32{size}}); err != nil {
					b.Fatal(err)
				}
				h.kick()
				h.waitInterrupt()
				h.ring.ResetHeap()
			}
		})
	}
}

// waitInterrupt blocks on the used-buffer interrupt, as a guest vCPU
// halted in its idle loop would, then takes the used entry.
func (h *harness) waitInterrupt() {
	for {
		if _, ok, err := h.ring.PopUsed(); err != nil {
			h.t.Fatal(err)
		} else if ok {
			return
		}
		<-h.irq.C
	}
}
