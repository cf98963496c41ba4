package net

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
	"golang.org/x/sys/unix"
)

// txPath moves the guest's frames from the transmit queue to the backend.
// It is used by the transmit goroutine only.
type txPath struct {
	d       *Device
	q       *virtio.Queue
	mem     virtio.Memory
	notify  <-chan struct{}
	limiter *ratelimit.Limiter
	acked   uint64
	tx      txScratch
	timer   *time.Timer
}

// txScratch is the per-frame working space, reused so that the hot path
// does not allocate: the header as the guest wrote it, the header we hand
// to the TAP, and the writev vector (that header, then the guest's frame
// buffers in place).
type txScratch struct {
	in  [HeaderSize]byte
	out [HeaderSize]byte
	iov [][]byte
}

func newTxPath(d *Device, q *virtio.Queue, mem virtio.Memory, notify <-chan struct{}, l *ratelimit.Limiter) txPath {
	return txPath{d: d, q: q, mem: mem, notify: notify, limiter: l, acked: d.acked,
		tx: txScratch{iov: make([][]byte, 0, 1+int(q.MaxSize()))}}
}

// run sends frames until ctx ends (nil) or the queue breaks (error).
func (t *txPath) run(ctx context.Context) error {
	for {
		throttle, err := t.drain()
		if err != nil {
			return fmt.Errorf("tx: %w", err)
		}
		if throttle > 0 {
			if !sleep(ctx, &t.timer, throttle) {
				return nil
			}
			continue
		}
		select {
		case <-t.notify:
		case <-ctx.Done():
			return nil
		}
	}
}

// drain sends every available frame, then re-enables notifications; it
// returns early with the time to wait when the rate limiter refuses a
// frame (which stays in the ring).
func (t *txPath) drain() (throttle time.Duration, err error) {
	defer func() {
		if serr := t.q.SignalUsed(); err == nil {
			err = serr
		}
	}()
	for {
		if err := t.q.DisableNotification(); err != nil {
			return 0, err
		}
		for {
			c, err := t.q.Pop()
			if err != nil {
				return 0, err
			}
			if c == nil {
				break
			}
			// Frame bytes, as on receive: the header is not traffic.
			if ok, wait := t.limiter.Consume(1, uint64(max(c.ReadableLen(), HeaderSize)-HeaderSize)); !ok {
				t.d.stats.txThrottled.Add(1)
				return wait, t.q.UndoPop()
			}
			t.send(c)
			if err := t.q.PushUsed(c.Head, 0); err != nil {
				return 0, err
			}
		}
		more, err := t.q.EnableNotification()
		if err != nil {
			return 0, err
		}
		if !more {
			return 0, nil
		}
	}
}

// send validates one chain and writes its frame to the backend. Every
// failure is the guest's or the host's and costs the frame only.
func (t *txPath) send(c *virtio.Chain) {
	s := &t.tx
	if c.WritableLen() != 0 {
		t.drop(&t.d.stats.txDroppedMalformed, "transmit chain has device-writable buffers", int(c.ReadableLen()))
		return
	}
	total := int(c.ReadableLen())
	if total < HeaderSize {
		t.drop(&t.d.stats.txDroppedMalformed, "transmit chain shorter than the virtio-net header", total)
		return
	}
	if total-HeaderSize > MaxFrameLen {
		t.drop(&t.d.stats.txDroppedMalformed, ErrFrameTooLong.Error(), total)
		return
	}
	// Gather the buffers in place; copy the header out once, so that what
	// is checked is what is sent even if the guest rewrites it meanwhile.
	s.iov = append(s.iov[:0], s.out[:])
	hdrLeft := HeaderSize
	for _, b := range c.Readable() {
		m, err := t.mem.Slice(b.Addr, uint64(b.Len))
		if err != nil {
			// Checked by the queue; memory does not shrink.
			t.drop(&t.d.stats.txDroppedMalformed, err.Error(), total)
			return
		}
		if hdrLeft > 0 {
			k := copy(s.in[HeaderSize-hdrLeft:], m)
			hdrLeft -= k
			m = m[k:]
		}
		if len(m) > 0 {
			s.iov = append(s.iov, m)
		}
	}
	h, _ := DecodeHeader(s.in[:])
	out, err := CheckTxHeader(h, total-HeaderSize, t.acked)
	if err != nil {
		t.drop(&t.d.stats.txDroppedHeader, err.Error(), total)
		return
	}
	out.Encode(s.out[:])
	n, err := t.d.backend.Writev(s.iov)
	clear(s.iov) // do not keep guest memory reachable from scratch
	if err != nil {
		t.drop(&t.d.stats.txDroppedBackend, fmt.Sprintf("%s refused the frame: %v", t.d.hostName, err), total)
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EIO) {
			t.d.stats.txBackendErrors.Add(1)
		}
		return
	}
	if n != total {
		t.drop(&t.d.stats.txDroppedBackend, fmt.Sprintf("%s took %d of %d bytes", t.d.hostName, n, total), total)
		return
	}
	t.d.stats.txFrames.Add(1)
	t.d.stats.txBytes.Add(uint64(total - HeaderSize))
}

func (t *txPath) drop(c *counter, why string, n int) {
	c.Add(1)
	t.d.logDrop(c, "tx", why, n)
}
