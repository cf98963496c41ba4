package vsock

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
)

// State is the device's own snapshot form, plain data. The transport saves
// the negotiated features and the queues (mmio.State); host-side
// connections are saved by nobody: after a restore the guest is sent a
// transport reset and closes its connections (its listeners survive), and
// host clients connect again.
type State struct {
	GuestCID uint64 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// State captures the device. Call it only while Run is stopped.
func (d *Device) State() State { return State{GuestCID: d.cid, UDSPath: d.udsPath} }

// Validate checks a state read from a snapshot file (untrusted).
func (st State) Validate() error {
	if err := (Config{GuestCID: st.GuestCID, UDSPath: st.UDSPath}).Validate(); err != nil {
		return fmt.Errorf("vsock state: %w", err)
	}
	return nil
}

// NewFromState creates the device of a snapshot. udsPath, when not empty,
// replaces the saved host socket path (Firecracker's vsock_override), so
// that clones of one snapshot each get their own socket. The transport's
// Restore then re-activates the device, and its first Run sends the guest
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
func NewFromState(st State, udsPath string, opts ...Option) (*Device, error) {
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
	if err := d.Restore(st); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Restore applies a snapshot's state to a device made with New (before the
// transport's Restore activates it): the guest CID must be the one the
// device was made with (the guest's driver keeps it; only the host path may
// change), and a transport reset becomes due. Run must not be running.
func (d *Device) Restore(st State) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if st.GuestCID != d.cid {
		return fmt.Errorf("restore vsock: snapshot has guest CID %d, the device was made with %d", st.GuestCID, d.cid)
	}
	d.resetOwed = true
	// The guest may still hold connections of the snapshot's process, whose
	// host ports started at 2^30 too, until it handles the reset: start this
	// process's ports elsewhere in the range so that a new connection does
	// not reuse the tuple of a stale one.
	var b [4]byte
	if _, err := rand.Read(b[:]); err == nil {
		off := binary.LittleEndian.Uint32(b[:]) % (localPortLast - localPortFirst)
		d.mux.lastPort = localPortFirst + off - 1
	}
	return nil
}
