package virtio

import (
	"context"
	"time"
)

// ChainHandler serves one chain and returns the bytes it wrote into the
// chain's writable part. A wait above zero means a rate limiter defers the
// request: the chain is given back to the queue, untouched, and served
// again after the wait.
type ChainHandler func(c *Chain) (written uint32, wait time.Duration, err error)

// ServeQueue is the Run loop of a device with one request queue (block,
// entropy): it serves the queue on every notification, and when the rate
// limiter deferred a request, again when the wait is over. It returns nil
// when ctx ends and the first error of the queue or the handler, which
// breaks the device.
func ServeQueue(ctx context.Context, q *Queue, notify <-chan struct{}, handle ChainHandler) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var retry <-chan time.Time
	for {
		wait, err := DrainQueue(q, handle)
		if err != nil {
			return err
		}
		if wait > 0 {
			timer.Reset(wait)
			retry = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-notify:
		case <-retry:
			retry = nil
		}
	}
}

// DrainQueue serves available chains until the queue is empty, with
// notifications suppressed meanwhile, or until handle defers one; it
// interrupts the driver once per pass. It returns the deferral's wait.
func DrainQueue(q *Queue, handle ChainHandler) (time.Duration, error) {
	for {
		if err := q.DisableNotification(); err != nil {
			return 0, err
		}
		for {
			c, err := q.Pop()
			if err != nil {
				return 0, err
			}
			if c == nil {
				break
			}
			written, wait, err := handle(c)
			if err != nil {
				return 0, err
			}
			if wait > 0 {
				if err := q.UndoPop(); err != nil {
					return 0, err
				}
				return wait, q.SignalUsed()
			}
			if err := q.PushUsed(c.Head, written); err != nil {
				return 0, err
			}
		}
		more, err := q.EnableNotification()
		if err != nil {
			return 0, err
		}
		if !more {
			return 0, q.SignalUsed()
		}
	}
}
