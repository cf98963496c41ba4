package net

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
	"golang.org/x/sys/unix"
)

// signalEvery bounds how many frames the receive worker delivers before it
// interrupts the guest while the TAP still has frames: enough to batch,
// few enough that a long burst does not leave the guest idle.
const signalEvery = 64

// rxPath moves frames from the backend into the receive queue. It is used
// by the receive goroutine only.
type rxPath struct {
	d         *Device
	q         *virtio.Queue
	mem       virtio.Memory
	dirty     virtio.DirtyMarker
	notify    <-chan struct{}
	limiter   *ratelimit.Limiter
	conn      syscall.RawConn
	mergeable bool
	acked     uint64

	// buf holds the pending frame, header first: pending bytes of it
	// (0: none). charged says the rate limiter was already paid for it.
	buf     []byte
	pending int
	charged bool
	// held are receive chains popped for the pending frame that do not
	// hold it yet (mergeable buffers, ring ran dry), heldCap their room.
	held    []*virtio.Chain
	heldCap int
	used    []usedElem
	heads   []uint16
	lens    []uint32
	// unsignalled counts frames delivered since the last SignalUsed.
	unsignalled int
	timer       *time.Timer
}

type usedElem struct {
	head uint16
	len  uint32
}

func newRxPath(d *Device, q *virtio.Queue, mem virtio.Memory, notify <-chan struct{}, l *ratelimit.Limiter) rxPath {
	r := rxPath{
		d: d, q: q, mem: mem, notify: notify, limiter: l,
		mergeable: d.acked&FeatureMrgRxbuf != 0,
		acked:     d.acked,
		buf:       make([]byte, MaxPacketLen+1),
	}
	r.dirty, _ = mem.(virtio.DirtyMarker)
	return r
}

// run delivers frames until ctx ends (nil) or the queue breaks (error).
func (r *rxPath) run(ctx context.Context) error {
	conn, err := r.d.backend.SyscallConn()
	if err != nil {
		return fmt.Errorf("rx: %w", err)
	}
	r.conn = conn
	for {
		if ctx.Err() != nil {
			return r.stop()
		}
		if r.pending == 0 {
			if err := r.readFrame(); err != nil {
				if ctx.Err() != nil {
					return r.stop()
				}
				return err
			}
			if r.pending == 0 {
				continue // dropped
			}
		}
		if !r.charged {
			ok, wait := r.limiter.Consume(1, uint64(r.pending-HeaderSize))
			if !ok {
				r.d.stats.rxThrottled.Add(1)
				if err := r.signal(); err != nil {
					return err
				}
				if !sleep(ctx, &r.timer, wait) {
					return r.stop()
				}
				continue
			}
			r.charged = true
		}
		done, err := r.deliver()
		if err != nil {
			return fmt.Errorf("rx: %w", err)
		}
		if done {
			r.pending, r.charged = 0, false
			continue
		}
		// No room: ask the driver to tell us about new buffers, then wait.
		if err := r.signal(); err != nil {
			return err
		}
		more, err := r.q.EnableNotification()
		if err != nil {
			return fmt.Errorf("rx: %w", err)
		}
		if more {
			// Buffers arrived meanwhile: no notifications while there
			// are some to use.
			if err := r.q.DisableNotification(); err != nil {
				return fmt.Errorf("rx: %w", err)
			}
			continue
		}
		r.d.stats.rxNoBuffers.Add(1)
		select {
		case <-r.notify:
		case <-ctx.Done():
			return r.stop()
		}
		if err := r.q.DisableNotification(); err != nil {
			return fmt.Errorf("rx: %w", err)
		}
	}
}

// readFrame reads the next frame into buf, waiting in the poller when the
// backend has none (after interrupting the guest for what was delivered).
// A frame the guest cannot take is dropped here, leaving pending at 0.
func (r *rxPath) readFrame() error {
	n, err := r.d.backend.Read(r.buf)
	if err == unix.EAGAIN {
		if err := r.signal(); err != nil {
			return err
		}
		var rerr error
		werr := r.conn.Read(func(uintptr) bool {
			n, rerr = r.d.backend.Read(r.buf)
			return rerr != unix.EAGAIN
		})
		if werr != nil {
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				return werr // cancelled: the caller sees ctx done
			}
			return fmt.Errorf("rx: wait for %s: %w", r.d.hostName, werr)
		}
		err = rerr
	}
	if err != nil {
		// The host side failed (interface deleted, fd broken): nothing
		// the guest did, but nothing will arrive any more either.
		return fmt.Errorf("rx: read %s: %w", r.d.hostName, err)
	}
	switch {
	case n < HeaderSize+EthHeaderLen:
		r.drop(&r.d.stats.rxDroppedMalformed, "frame from the host shorter than an Ethernet header", n)
		return nil
	case n > MaxPacketLen:
		r.drop(&r.d.stats.rxDroppedTooBig, "frame from the host longer than 64 KiB", n)
		return nil
	}
	h, _ := DecodeHeader(r.buf)
	h, err = FixRxHeader(h, r.acked)
	if err != nil {
		r.drop(&r.d.stats.rxDroppedOffload, err.Error(), n)
		return nil
	}
	h.Encode(r.buf)
	r.pending = n
	return nil
}

// deliver copies the pending frame into receive chains. It reports false
// when the ring has too little room yet (chains taken so far stay held).
func (r *rxPath) deliver() (bool, error) {
	need := r.pending
	for r.heldCap < need && (r.mergeable || len(r.held) == 0) {
		c, err := r.q.Pop()
		if err != nil {
			return false, err
		}
		if c == nil {
			return false, nil
		}
		if c.ReadableLen() != 0 {
			return false, fmt.Errorf("%w: receive chain %d has %d device-readable bytes", virtio.ErrInvalidChain, c.Head, c.ReadableLen())
		}
		if r.mergeable && c.WritableLen() < HeaderSize {
			return false, fmt.Errorf("%w: mergeable receive buffer %d of %d bytes cannot hold the %d-byte header", virtio.ErrInvalidChain, c.Head, c.WritableLen(), HeaderSize)
		}
		r.held = append(r.held, c)
		r.heldCap += int(c.WritableLen())
	}
	if r.heldCap < need {
		// One buffer per frame and it is too small: the frame is lost,
		// the buffer waits for the next one.
		if err := r.q.UndoPop(); err != nil {
			return false, err
		}
		r.held, r.heldCap = r.held[:0], 0
		r.drop(&r.d.stats.rxDroppedTooBig, "frame larger than the guest's receive buffer", need)
		return true, nil
	}
	// num_buffers is 1 without mergeable buffers (§5.1.6.4).
	putNumBuffers(r.buf, uint16(len(r.held)))
	src := r.buf[:need]
	r.used = r.used[:0]
	for _, c := range r.held {
		var written uint32
		for _, b := range c.Writable() {
			if len(src) == 0 {
				break
			}
			s, err := r.mem.Slice(b.Addr, uint64(b.Len))
			if err != nil {
				return false, fmt.Errorf("%w: receive buffer at %#x: %w", virtio.ErrInvalidChain, uint64(b.Addr), err)
			}
			k := copy(s, src)
			if r.dirty != nil {
				r.dirty.MarkDirty(b.Addr, uint64(k))
			}
			src = src[k:]
			written += uint32(k)
		}
		r.used = append(r.used, usedElem{c.Head, written})
	}
	clear(r.held)
	r.held, r.heldCap = r.held[:0], 0
	// Counted before the guest can see it, so that metrics never lag
	// what the guest received.
	r.d.stats.rxFrames.Add(1)
	r.d.stats.rxBytes.Add(uint64(need - HeaderSize))
	if err := r.publish(); err != nil {
		return false, err
	}
	r.unsignalled++
	if r.unsignalled >= signalEvery {
		if err := r.signal(); err != nil {
			return false, err
		}
	}
	return true, nil
}

// publish returns the chains in r.used to the driver: all at once when the
// queue can, which mergeable buffers need (see usedPublisher).
func (r *rxPath) publish() error {
	if len(r.used) > 1 {
		if p, ok := any(r.q).(usedPublisher); ok {
			r.heads, r.lens = r.heads[:0], r.lens[:0]
			for _, u := range r.used {
				r.heads = append(r.heads, u.head)
				r.lens = append(r.lens, u.len)
			}
			return p.PushUsedN(r.heads, r.lens)
		}
	}
	for _, u := range r.used {
		if err := r.q.PushUsed(u.head, u.len); err != nil {
			return err
		}
	}
	return nil
}

func putNumBuffers(hdr []byte, n uint16) {
	hdr[10], hdr[11] = byte(n), byte(n>>8)
}

// signal interrupts the guest for the frames delivered since the last call
// (the queue applies the driver's suppression).
func (r *rxPath) signal() error {
	if r.unsignalled == 0 {
		return nil
	}
	r.unsignalled = 0
	if err := r.q.SignalUsed(); err != nil {
		return fmt.Errorf("rx: %w", err)
	}
	return nil
}

// stop ends a Run. Chains held for a frame that did not fit yet must not
// stay consumed in a snapshot, where the guest would lose them: they are
// un-popped where the queue can, else they go back used and empty, which a
// driver recycles (Linux counts an rx_length_error). The pending frame
// itself stays for the next Run.
func (r *rxPath) stop() error {
	if rw, ok := any(r.q).(rewinder); ok && len(r.held) > 0 {
		if err := rw.Rewind(uint16(len(r.held))); err != nil {
			return fmt.Errorf("rx: %w", err)
		}
		clear(r.held)
		r.held, r.heldCap = r.held[:0], 0
	}
	if len(r.held) > 0 {
		for _, c := range r.held {
			if err := r.q.PushUsed(c.Head, 0); err != nil {
				return fmt.Errorf("rx: %w", err)
			}
			r.unsignalled++
		}
		r.d.stats.rxBuffersReturnedEmpty.Add(uint64(len(r.held)))
		clear(r.held)
		r.held, r.heldCap = r.held[:0], 0
	}
	return r.signal()
}

func (r *rxPath) drop(c *counter, why string, n int) {
	c.Add(1)
	r.d.logDrop(c, "rx", why, n)
}

// sleep waits d or until ctx ends, reusing *t; it reports false when ctx
// ended.
func sleep(ctx context.Context, t **time.Timer, d time.Duration) bool {
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	select {
	case <-(*t).C:
		return true
	case <-ctx.Done():
		(*t).Stop()
		return false
	}
}
