package vsock

import (
	"container/heap"
	"time"
)

// timerHeap orders connections by expiry. Every connection is in it at most
// once, so it is bounded by the connection limit whatever the guest does.
type timerHeap []*conn

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].timerAt.Before(h[j].timerAt) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].timerIdx = i
	h[j].timerIdx = j
}
func (h *timerHeap) Push(x any) {
	c := x.(*conn)
	c.timerIdx = len(*h)
	*h = append(*h, c)
}
func (h *timerHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.timerIdx = -1
	return c
}

// sync brings c's place in the heap in line with its expiry.
func (h *timerHeap) sync(c *conn) {
	if c.expiry.Equal(c.timerAt) && (c.timerIdx >= 0) == !c.expiry.IsZero() {
		return
	}
	c.timerAt = c.expiry
	switch {
	case c.expiry.IsZero() && c.timerIdx >= 0:
		heap.Remove(h, c.timerIdx)
	case c.expiry.IsZero():
	case c.timerIdx >= 0:
		heap.Fix(h, c.timerIdx)
	default:
		heap.Push(h, c)
	}
}

// remove takes c out of the heap if it is there.
func (h *timerHeap) remove(c *conn) {
	if c.timerIdx >= 0 {
		heap.Remove(h, c.timerIdx)
	}
	c.timerAt = time.Time{}
}

// next is the earliest expiry, or zero when no timer is armed.
func (h timerHeap) next() time.Time {
	if len(h) == 0 {
		return time.Time{}
	}
	return h[0].timerAt
}

// popExpired removes and returns the earliest connection if it expired.
func (h *timerHeap) popExpired(now time.Time) *conn {
	if len(*h) == 0 || (*h)[0].timerAt.After(now) {
		return nil
	}
	c := heap.Pop(h).(*conn)
	c.timerAt = time.Time{}
	return c
}
