package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

// MaxQueueSize is the largest split virtqueue (§2.7: a power of two that
// fits 16-bit indices with room to tell full from empty).
const MaxQueueSize = 32768

// Ring layout (§2.7.6, §2.7.8) and flags.
const (
	ringFlagsOff = 0
	ringIdxOff   = 2
	ringOff      = 4
	availEntry   = 2
	usedEntry    = 8

	availFlagNoInterrupt = 1
	usedFlagNoNotify     = 1

	descAlign  = 16
	availAlign = 2
	usedAlign  = 4
)

// Ring sizes, each including the trailing event-index field (§2.7's table
// counts it whether or not VIRTIO_F_EVENT_IDX is negotiated).
func descTableSize(size uint16) uint64 { return descSize * uint64(size) }
func availRingSize(size uint16) uint64 { return 6 + availEntry*uint64(size) }
func usedRingSize(size uint16) uint64  { return 6 + usedEntry*uint64(size) }

// Queue is one split virtqueue. The transport configures it from the
// driver's register writes (SetSize, SetDescTable, ..., SetReady) and
// activates it when the driver sets DRIVER_OK; from then on it belongs to
// the device's worker goroutine, which calls Pop, PushUsed and SignalUsed.
// A Queue is not safe for concurrent use by several goroutines.
//
// The typical worker pass over a queue:
//
//	for {
//		q.DisableNotification()
//		for {
//			c, err := q.Pop()
//			if err != nil {
//				return err // malformed chain: the device is broken
//			}
//			if c == nil {
//				break
//			}
//			written := handle(c) // c.Reader(), c.Writer()
//			if err := q.PushUsed(c.Head, written); err != nil {
//				return err
//			}
//		}
//		more, err := q.EnableNotification()
//		if err != nil {
//			return err
//		}
//		if !more {
//			break
//		}
//	}
//	return q.SignalUsed()
type Queue struct {
	index   int
	maxSize uint16

	// Driver configuration, written through the transport before the queue
	// is activated and not changed while it is active.
	size      uint16
	ready     bool
	descTable memory.GuestAddr
	availRing memory.GuestAddr
	usedRing  memory.GuestAddr

	// Set by Activate; used only by the worker afterwards.
	active   bool
	mem      Memory
	irq      Interrupt
	eventIdx bool
	indirect bool
	// nextAvail is the next available-ring entry to consume; availIdx the
	// driver's avail.idx as last read (entries up to it are known to be
	// published). nextUsed is our used.idx.
	nextAvail uint16
	availIdx  uint16
	nextUsed  uint16
	// signalledUsed is nextUsed when SignalUsed last decided whether to
	// interrupt (vring_need_event's old index); unset until the first call.
	signalledUsed  uint16
	signalledValid bool
	// undoable is true right after a Pop, until the next queue operation.
	undoable bool
	// err is the first protocol violation; once set the queue does nothing.
	err error
	bar barrier
}

// NewQueue returns queue index of a device, not ready, at its maximum size.
func NewQueue(index int, maxSize uint16) *Queue {
	q := &Queue{index: index, maxSize: maxSize}
	q.Reset()
	return q
}

// Reset returns the queue to its state after NewQueue (device reset).
func (q *Queue) Reset() {
	*q = Queue{index: q.index, maxSize: q.maxSize, size: q.maxSize}
}

// Index is the queue's number within its device.
func (q *Queue) Index() int { return q.index }

// MaxSize is the largest size the device accepts (QueueNumMax).
func (q *Queue) MaxSize() uint16 { return q.maxSize }

// Size is the size the driver chose (QueueNum).
func (q *Queue) Size() uint16 { return q.size }

// Ready reports the driver's QueueReady bit.
func (q *Queue) Ready() bool { return q.ready }

// DescTable, AvailRing and UsedRing are the driver's ring addresses
// (Descriptor, Driver and Device Areas).
func (q *Queue) DescTable() memory.GuestAddr { return q.descTable }
func (q *Queue) AvailRing() memory.GuestAddr { return q.availRing }
func (q *Queue) UsedRing() memory.GuestAddr  { return q.usedRing }

// Active reports whether the queue was activated and is usable.
func (q *Queue) Active() bool { return q.active && q.ready && q.err == nil }

// SetSize, SetReady and the address setters record the driver's
// configuration; they are checked by Validate at activation, not here,
// because the driver writes them one at a time.
func (q *Queue) SetSize(n uint16)                { q.size = n }
func (q *Queue) SetReady(r bool)                 { q.ready = r }
func (q *Queue) SetDescTable(a memory.GuestAddr) { q.descTable = a }
func (q *Queue) SetAvailRing(a memory.GuestAddr) { q.availRing = a }
func (q *Queue) SetUsedRing(a memory.GuestAddr)  { q.usedRing = a }

// Validate checks a ready queue's configuration against guest memory: a
// power-of-two size within the maximum, rings aligned as §2.7 requires and
// wholly inside RAM. A queue that is not ready is always valid (unused).
func (q *Queue) Validate(mem Memory) error {
	if !q.ready {
		return nil
	}
	if q.size == 0 || q.size > q.maxSize || q.size&(q.size-1) != 0 {
		return fmt.Errorf("queue %d: size %d is not a power of two in [1, %d]", q.index, q.size, q.maxSize)
	}
	for _, r := range []struct {
		name  string
		addr  memory.GuestAddr
		align uint64
		size  uint64
	}{
		{"descriptor table", q.descTable, descAlign, descTableSize(q.size)},
		{"available ring", q.availRing, availAlign, availRingSize(q.size)},
		{"used ring", q.usedRing, usedAlign, usedRingSize(q.size)},
	} {
		if uint64(r.addr)%r.align != 0 {
			return fmt.Errorf("queue %d: %s at %#x is not %d-byte aligned", q.index, r.name, uint64(r.addr), r.align)
		}
		if err := checkRange(mem, fmt.Sprintf("queue %d: %s", q.index, r.name), r.addr, r.size); err != nil {
			return err
		}
	}
	return nil
}

// Activate validates the configuration and makes the queue usable with the
// negotiated features; irq delivers used-buffer interrupts. An unready
// queue activates as unused.
func (q *Queue) Activate(mem Memory, features uint64, irq Interrupt) error {
	if err := q.Validate(mem); err != nil {
		return err
	}
	q.mem, q.irq = mem, irq
	q.eventIdx = features&FeatureEventIdx != 0
	q.indirect = features&FeatureIndirectDesc != 0
	q.active = true
	return nil
}

func (q *Queue) fail(err error) error {
	if q.err == nil {
		q.err = fmt.Errorf("queue %d: %w", q.index, err)
	}
	return q.err
}

func (q *Queue) availAddr(off uint64) memory.GuestAddr { return q.availRing + memory.GuestAddr(off) }
func (q *Queue) usedAddr(off uint64) memory.GuestAddr  { return q.usedRing + memory.GuestAddr(off) }

// usedEventAddr is used_event, after the available ring's entries.
func (q *Queue) usedEventAddr() memory.GuestAddr {
	return q.availAddr(ringOff + availEntry*uint64(q.size))
}

// availEventAddr is avail_event, after the used ring's entries.
func (q *Queue) availEventAddr() memory.GuestAddr {
	return q.usedAddr(ringOff + usedEntry*uint64(q.size))
}

// readAvailIdx reads the driver's avail.idx and checks it: the driver can
// publish at most size chains the device has not consumed, so an index
// further ahead is corrupt (and would make the device walk stale entries).
func (q *Queue) readAvailIdx() (uint16, error) {
	idx, err := load16(q.mem, q.availAddr(ringIdxOff))
	if err != nil {
		return 0, q.fail(fmt.Errorf("%w: read avail.idx: %w", ErrInvalidChain, err))
	}
	if pending := idx - q.nextAvail; pending > q.size {
		return 0, q.fail(fmt.Errorf("%w: avail.idx %d is %d entries ahead of the device's %d, more than the queue size %d", ErrInvalidChain, idx, pending, q.nextAvail, q.size))
	}
	return idx, nil
}

// Pop returns the next available chain, validated, or nil when there is
// none (or the queue is not active). An error means the driver broke the
// protocol; the queue then stays broken and the device should stop.
func (q *Queue) Pop() (*Chain, error) {
	q.undoable = false
	if q.err != nil {
		return nil, q.err
	}
	if !q.active || !q.ready {
		return nil, nil
	}
	if q.nextAvail == q.availIdx {
		idx, err := q.readAvailIdx()
		if err != nil {
			return nil, err
		}
		if idx == q.nextAvail {
			return nil, nil
		}
		q.availIdx = idx
		// Order: avail.idx (just read) before the ring entry and the
		// descriptors it publishes; the driver wrote those first and
		// fenced before updating the index (§2.7.13.3.1).
		q.bar.fence()
	}
	slot := uint64(q.nextAvail & (q.size - 1))
	head, err := load16(q.mem, q.availAddr(ringOff+availEntry*slot))
	if err != nil {
		return nil, q.fail(fmt.Errorf("%w: read avail ring entry %d: %w", ErrInvalidChain, slot, err))
	}
	c, err := walkChain(q.mem, q.descTable, q.size, head, q.indirect, int(q.size))
	if err != nil {
		return nil, q.fail(err)
	}
	q.nextAvail++
	q.undoable = true
	return c, nil
}

// UndoPop puts back the chain returned by the immediately preceding Pop, so
// that a device that cannot serve it now (rate limited) finds it again on
// the next Pop, and a snapshot taken meanwhile still counts it as pending.
func (q *Queue) UndoPop() error {
	if !q.undoable {
		return errors.New("virtio: UndoPop without a preceding Pop")
	}
	q.undoable = false
	q.nextAvail--
	return nil
}

// PushUsed returns chain head to the driver with the number of bytes the
// device wrote into its writable part. Call SignalUsed after a batch.
func (q *Queue) PushUsed(head uint16, written uint32) error {
	q.undoable = false
	if q.err != nil {
		return q.err
	}
	if !q.active || !q.ready {
		return fmt.Errorf("queue %d: PushUsed on an inactive queue", q.index)
	}
	if head >= q.size {
		return fmt.Errorf("queue %d: PushUsed of head %d outside the %d-entry table", q.index, head, q.size)
	}
	slot := uint64(q.nextUsed & (q.size - 1))
	addr := q.usedAddr(ringOff + usedEntry*slot)
	s, err := q.mem.Slice(addr, usedEntry)
	if err != nil {
		return q.fail(fmt.Errorf("%w: write used ring entry %d: %w", ErrInvalidChain, slot, err))
	}
	binary.LittleEndian.PutUint32(s[0:], uint32(head))
	binary.LittleEndian.PutUint32(s[4:], written)
	markDirty(q.mem, addr, usedEntry)
	// Order: the buffer contents and the used entry before the used.idx
	// that publishes them (§2.7.8.2: len is set prior to updating idx).
	q.bar.fence()
	q.nextUsed++
	if err := store16(q.mem, q.usedAddr(ringIdxOff), q.nextUsed); err != nil {
		return q.fail(fmt.Errorf("%w: write used.idx: %w", ErrInvalidChain, err))
	}
	return nil
}

// needEvent is vring_need_event: whether moving the used index from old to
// new passed the driver's event index.
func needEvent(event, new, old uint16) bool { return new-event-1 < new-old }

// SignalUsed interrupts the driver if buffers were used since the last call
// and the driver has not suppressed the interrupt (VRING_AVAIL_F_NO_INTERRUPT,
// or used_event with VIRTIO_F_EVENT_IDX, §2.7.7).
func (q *Queue) SignalUsed() error {
	q.undoable = false
	if !q.active || !q.ready || q.err != nil {
		return nil
	}
	if q.signalledValid && q.signalledUsed == q.nextUsed {
		return nil
	}
	// Order: our used.idx store before reading the driver's suppression
	// fields (store→load, the reordering x86 allows): otherwise the driver
	// may re-enable interrupts after reading a stale used.idx while we read
	// its stale "suppressed" value, and the interrupt is lost.
	q.bar.fence()
	need := true
	if q.eventIdx {
		event, err := load16(q.mem, q.usedEventAddr())
		if err != nil {
			return q.fail(fmt.Errorf("%w: read used_event: %w", ErrInvalidChain, err))
		}
		if q.signalledValid {
			need = needEvent(event, q.nextUsed, q.signalledUsed)
		}
	} else {
		flags, err := load16(q.mem, q.availAddr(ringFlagsOff))
		if err != nil {
			return q.fail(fmt.Errorf("%w: read avail.flags: %w", ErrInvalidChain, err))
		}
		need = flags&availFlagNoInterrupt == 0
	}
	q.signalledUsed, q.signalledValid = q.nextUsed, true
	if !need || q.irq == nil {
		return nil
	}
	return q.irq.UsedBuffer()
}

// DisableNotification asks the driver not to notify while the device is
// draining the queue. With VIRTIO_F_EVENT_IDX leaving avail_event behind
// has that effect already.
func (q *Queue) DisableNotification() error {
	q.undoable = false
	if !q.active || !q.ready || q.err != nil || q.eventIdx {
		return nil
	}
	return q.setUsedFlags(usedFlagNoNotify)
}

// EnableNotification asks the driver to notify on the next available
// buffer and reports whether buffers arrived meanwhile (then drain again:
// the driver may have checked before our request was visible).
func (q *Queue) EnableNotification() (more bool, err error) {
	q.undoable = false
	if !q.active || !q.ready || q.err != nil {
		return false, q.err
	}
	if q.eventIdx {
		if err := store16(q.mem, q.availEventAddr(), q.nextAvail); err != nil {
			return false, q.fail(fmt.Errorf("%w: write avail_event: %w", ErrInvalidChain, err))
		}
	} else if err := q.setUsedFlags(0); err != nil {
		return false, err
	}
	// Order: the store above before re-reading avail.idx (store→load), so
	// that either the driver sees our request or we see its new buffers.
	q.bar.fence()
	idx, err := q.readAvailIdx()
	if err != nil {
		return false, err
	}
	q.availIdx = idx
	return idx != q.nextAvail, nil
}

func (q *Queue) setUsedFlags(flags uint16) error {
	if err := store16(q.mem, q.usedAddr(ringFlagsOff), flags); err != nil {
		return q.fail(fmt.Errorf("%w: write used.flags: %w", ErrInvalidChain, err))
	}
	return nil
}
