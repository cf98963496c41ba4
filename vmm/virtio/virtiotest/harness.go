package virtiotest

import (
	"context"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
)

// Harness runs a device's worker against driver-side rings, without a
// transport: each queue is configured at the device's maximum size and
// activated with the given features, and Run executes on a goroutine that
// the harness stops at the end of the test (failing it if Run failed).
type Harness struct {
	T      testing.TB
	Mem    *memory.Memory
	Dev    virtio.Device
	Rings  []*Ring
	Queues []*virtio.Queue
	IRQ    *Notifications

	notify []chan struct{}
	poll   *time.Ticker
	cancel context.CancelFunc
	done   chan error
}

// HarnessMemory is the guest memory size of a Harness; each queue gets a
// ring and 4 MiB of buffer space from 1 MiB up.
const HarnessMemory = 64 << 20

// NewHarness activates dev with features and starts its worker.
func NewHarness(t testing.TB, dev virtio.Device, features uint64) *Harness {
	t.Helper()
	mem, err := NewMemory(HarnessMemory)
	if err != nil {
		t.Fatal(err)
	}
	h := &Harness{T: t, Mem: mem, Dev: dev, IRQ: NewNotifications()}
	sizes := dev.QueueMaxSizes()
	if len(sizes) > 15 {
		t.Fatalf("virtiotest: %d queues, the harness lays out 15", len(sizes))
	}
	var notify []<-chan struct{}
	for i, size := range sizes {
		base := memory.GuestAddr(0x10000 * (i + 1))
		heap := memory.GuestAddr(1<<20 + i*(4<<20))
		r, err := NewRing(mem, base, size, heap, heap+4<<20)
		if err != nil {
			t.Fatal(err)
		}
		q := virtio.NewQueue(i, size)
		r.Configure(q)
		if err := q.Activate(mem, features, h.IRQ); err != nil {
			t.Fatal(err)
		}
		ch := make(chan struct{}, 1)
		h.Rings, h.Queues, h.notify = append(h.Rings, r), append(h.Queues, q), append(h.notify, ch)
		notify = append(notify, ch)
	}
	if err := dev.Activate(virtio.Activation{Features: features, Memory: mem, Queues: h.Queues, Notify: notify, Interrupt: h.IRQ}); err != nil {
		t.Fatal(err)
	}
	h.Start()
	t.Cleanup(func() {
		if err := h.Stop(); err != nil {
			t.Errorf("device Run: %v", err)
		}
		if h.poll != nil {
			h.poll.Stop()
		}
		mem.Close()
	})
	return h
}

// Start runs the worker (again, after Stop).
func (h *Harness) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.Dev.Run(ctx) }()
}

// Stop cancels the worker and returns Run's result.
func (h *Harness) Stop() error {
	if h.cancel == nil {
		return nil
	}
	h.cancel()
	h.cancel = nil
	return <-h.done
}

// Done returns Run's result if the worker has exited by itself (a broken
// device) within d, and whether it had.
func (h *Harness) Done(d time.Duration) (error, bool) {
	select {
	case err := <-h.done:
		h.cancel = nil
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

// Kick notifies queue i, as a QueueNotify write would.
func (h *Harness) Kick(i int) {
	select {
	case h.notify[i] <- struct{}{}:
	default:
	}
}

// Request adds a chain to queue i, notifies the device and waits for the
// chain to be used.
func (h *Harness) Request(i int, s Segments) Used {
	h.T.Helper()
	if _, err := h.Rings[i].Add(s); err != nil {
		h.T.Fatal(err)
	}
	h.Kick(i)
	return h.Wait(i)
}

// Wait returns the next used entry of queue i, blocking on the device's
// interrupt, and fails the test after 10 s without one.
func (h *Harness) Wait(i int) Used {
	h.T.Helper()
	return h.wait(i, h.Rings[i].PopUsed)
}

// WaitEntry is Wait without copying the data out (benchmarks, where the
// test's own copy and allocation would dominate).
func (h *Harness) WaitEntry(i int) Used {
	h.T.Helper()
	return h.wait(i, h.Rings[i].PopUsedEntry)
}

func (h *Harness) wait(i int, pop func() (Used, bool, error)) Used {
	h.T.Helper()
	var deadline time.Time
	for {
		u, ok, err := pop()
		if err != nil {
			h.T.Fatal(err)
		}
		if ok {
			return u
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(10 * time.Second)
			if h.poll == nil {
				h.poll = time.NewTicker(10 * time.Millisecond)
			}
		}
		select {
		case <-h.IRQ.C:
		case <-h.poll.C:
			// An interrupt the driver's flags suppressed still leaves the
			// entry to poll for.
			if time.Now().After(deadline) {
				h.T.Fatalf("queue %d: no used buffer within 10 s", i)
			}
		}
	}
}
