package virtio

import (
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

// QueueState is a queue's complete state, plain data for snapshots. It is
// untrusted on restore (a state file can be corrupt or crafted) and
// RestoreQueue checks it against the device and guest memory.
type QueueState struct {
	MaxSize   uint16 `json:"max_size"`
	Size      uint16 `json:"size"`
	Ready     bool   `json:"ready"`
	DescTable uint64 `json:"desc_table"`
	AvailRing uint64 `json:"avail_ring"`
	UsedRing  uint64 `json:"used_ring"`
	// Active is set once the queue was activated (DRIVER_OK).
	Active    bool   `json:"active"`
	NextAvail uint16 `json:"next_avail"`
	NextUsed  uint16 `json:"next_used"`
	// EventIdx and Indirect record the negotiated ring features, so that a
	// restore can check them against the transport's feature state.
	EventIdx bool `json:"event_idx"`
	Indirect bool `json:"indirect"`
	// SignalledUsed is the used index at the last interrupt decision, for
	// VIRTIO_F_EVENT_IDX; SignalledValid is false until the first one.
	SignalledUsed  uint16 `json:"signalled_used"`
	SignalledValid bool   `json:"signalled_valid"`
}

// State captures the queue. Call it only while the worker is stopped.
func (q *Queue) State() QueueState {
	return QueueState{
		MaxSize:        q.maxSize,
		Size:           q.size,
		Ready:          q.ready,
		DescTable:      uint64(q.descTable),
		AvailRing:      uint64(q.availRing),
		UsedRing:       uint64(q.usedRing),
		Active:         q.active,
		NextAvail:      q.nextAvail,
		NextUsed:       q.nextUsed,
		EventIdx:       q.eventIdx,
		Indirect:       q.indirect,
		SignalledUsed:  q.signalledUsed,
		SignalledValid: q.signalledValid,
	}
}

// RestoreQueue rebuilds queue index of a device whose maximum size is
// maxSize from st. features are the negotiated features and irq the
// transport's interrupt (both used only if st is active). It checks st as
// untrusted input: the maximum size must be the device's, the size a power
// of two within it, and an active ready queue must have valid rings whose
// indices agree with guest memory (the used index the device last wrote,
// and no more than a queue's worth of pending available entries).
func RestoreQueue(index int, maxSize uint16, st QueueState, mem Memory, features uint64, irq Interrupt) (*Queue, error) {
	if st.MaxSize != maxSize {
		return nil, fmt.Errorf("queue %d: state has maximum size %d, the device has %d", index, st.MaxSize, maxSize)
	}
	q := NewQueue(index, maxSize)
	q.size, q.ready = st.Size, st.Ready
	q.descTable = memory.GuestAddr(st.DescTable)
	q.availRing = memory.GuestAddr(st.AvailRing)
	q.usedRing = memory.GuestAddr(st.UsedRing)
	if st.Size == 0 || st.Size > maxSize || st.Size&(st.Size-1) != 0 {
		return nil, fmt.Errorf("queue %d: state has size %d, not a power of two in [1, %d]", index, st.Size, maxSize)
	}
	if !st.Active {
		if st.NextAvail != 0 || st.NextUsed != 0 || st.SignalledValid {
			return nil, fmt.Errorf("queue %d: state of an inactive queue has ring indices", index)
		}
		return q, nil
	}
	if st.EventIdx != (features&FeatureEventIdx != 0) || st.Indirect != (features&FeatureIndirectDesc != 0) {
		return nil, fmt.Errorf("queue %d: state's ring features (event-idx %v, indirect %v) disagree with the negotiated features %#x", index, st.EventIdx, st.Indirect, features)
	}
	if err := q.Activate(mem, features, irq); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	q.nextAvail, q.availIdx, q.nextUsed = st.NextAvail, st.NextAvail, st.NextUsed
	q.signalledUsed, q.signalledValid = st.SignalledUsed, st.SignalledValid
	if !st.Ready {
		return q, nil
	}
	used, err := load16(mem, q.usedAddr(ringIdxOff))
	if err != nil {
		return nil, fmt.Errorf("queue %d: read used.idx: %w", index, err)
	}
	if used != st.NextUsed {
		return nil, fmt.Errorf("queue %d: state's used index %d differs from %d in guest memory (state and memory from different snapshots?)", index, st.NextUsed, used)
	}
	if _, err := q.readAvailIdx(); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return q, nil
}
