package vsock

import (
	"errors"
	"fmt"

	"github.com/voltvmm/volt/vmm/virtio"
)

// State is the device's snapshot form, plain data. Host-side connections
// are not part of it: after a restore the guest is sent a transport reset
// and closes its connections (its listeners survive), and host clients
// connect again.
type State struct {
	GuestCID uint64 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
	// Activated is set once the driver set DRIVER_OK; Features and Queues
	// (rx, tx, event) are meaningful only then.
	Activated bool                `json:"activated"`
	Features  uint64              `json:"features,omitempty"`
	Queues    []virtio.QueueState `json:"queues,omitempty"`
}

// State captures the device. Call it only while Run is stopped (the VM is
// paused).
func (d *Device) State() State {
	st := State{GuestCID: d.cid, UDSPath: d.udsPath, Activated: d.active}
	if d.active {
		st.Features = d.act.Features
		for _, q := range d.act.Queues {
			st.Queues = append(st.Queues, q.State())
		}
	}
	return st
}

// Validate checks a state read from a snapshot file (untrusted).
func (st State) Validate() error {
	if err := (Config{GuestCID: st.GuestCID, UDSPath: st.UDSPath}).Validate(); err != nil {
		return fmt.Errorf("vsock state: %w", err)
	}
	if !st.Activated {
		if len(st.Queues) != 0 || st.Features != 0 {
			return errors.New("vsock state: an inactive device has queue state")
		}
		return nil
	}
	if len(st.Queues) != numQueues {
		return fmt.Errorf("vsock state: %d queues, want %d", len(st.Queues), numQueues)
	}
	if st.Features&^virtio.QueueFeatures != 0 || st.Features&virtio.FeatureVersion1 == 0 {
		return fmt.Errorf("vsock state: features %#x are not a subset of the offered %#x with VERSION_1", st.Features, uint64(virtio.QueueFeatures))
	}
	return nil
}

// Restore creates a device from st. udsPath, when not empty, replaces the
// saved host socket path (Firecracker's vsock_override), so that clones of
// one snapshot each get their own socket. The queues are rebuilt from st
// against mem and checked; the device is active when st is, and its first
// Run sends the guest VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
//
// notify and log complete the Activation as the transport would at
// DRIVER_OK (notify may be nil in tests that call Run's pieces directly).
func Restore(st State, udsPath string, a virtio.Activation, opts ...Option) (*Device, error) {
	if err := st.Validate(); err != nil {
		return nil, err
	}
	cfg := Config{GuestCID: st.GuestCID, UDSPath: st.UDSPath}
	if udsPath != "" {
		cfg.UDSPath = udsPath
	}
	d, err := New(cfg, opts...)
	if err != nil {
		return nil, fmt.Errorf("restore vsock: %w", err)
	}
	if !st.Activated {
		return d, nil
	}
	if a.Memory == nil {
		d.Close()
		return nil, errors.New("restore vsock: no guest memory")
	}
	sizes := d.QueueMaxSizes()
	a.Features = st.Features
	a.Queues = make([]*virtio.Queue, numQueues)
	for i, qs := range st.Queues {
		q, err := virtio.RestoreQueue(i, sizes[i], qs, a.Memory, st.Features, a.Interrupt)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("restore vsock: %w", err)
		}
		a.Queues[i] = q
	}
	if err := d.Activate(a); err != nil {
		d.Close()
		return nil, fmt.Errorf("restore vsock: %w", err)
	}
	d.resetOwed = true
	return d, nil
}

// ScheduleTransportReset makes the next Run send the guest
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, for a transport that restores the
// queues itself and activates a device made with New. Run must not be
// running.
func (d *Device) ScheduleTransportReset() { d.resetOwed = true }
