package blk

import "fmt"

// State is the device's part of a snapshot, plain data. The requests in
// flight are in the queue (the transport's state): the device completes
// every request before its worker stops, so nothing else is pending. The
// rate limiter restarts with full buckets.
type State struct {
	// Capacity and Features describe the disk the guest saw; a restore
	// onto a disk of another size or kind is refused, since the guest's
	// file systems were laid out on the old one.
	Capacity uint64 `json:"capacity"`
	Features uint64 `json:"features"`
	ID       string `json:"id"`
}

// State captures the device.
func (d *Device) State() State {
	id := string(d.id[:])
	for len(id) > 0 && id[len(id)-1] == 0 {
		id = id[:len(id)-1]
	}
	return State{Capacity: d.capacity, Features: d.features, ID: id}
}

// Restore checks st against the device as configured now (it is untrusted,
// and the drive may have been replaced since the snapshot). The device ID
// may change (a new host path); size and features may not.
func (d *Device) Restore(st State) error {
	if st.Capacity != d.capacity {
		return fmt.Errorf("virtio-blk: snapshot's disk had %d sectors, this one has %d", st.Capacity, d.capacity)
	}
	if st.Features != d.features {
		return fmt.Errorf("virtio-blk: snapshot's disk offered features %#x, this one offers %#x (read-only, discard or block size changed?)", st.Features, d.features)
	}
	return nil
}
