package net

import (
	"fmt"
	"log/slog"

	"github.com/voltvmm/volt/vmm/ratelimit"
)

// State is the device's own part of a snapshot, plain data. The negotiated
// features and the queues are the transport's (mmio.State); the TAP itself
// is not state: a restore opens the backend again by name, in the
// restoring process's network namespace (the pool gives every clone one
// holding a TAP of the same name). Frames in flight are not saved, as a
// network may always lose them; the rate limiters restart full.
type State struct {
	ID      string        `json:"id"`
	Backend BackendConfig `json:"backend"`
	// HostName is the interface that was in use (for a bridged TAP, the
	// kernel's choice; a restore makes a new one).
	HostName      string           `json:"host_name"`
	MAC           string           `json:"mac"`
	MTU           uint16           `json:"mtu,omitempty"`
	QueueSize     uint16           `json:"queue_size"`
	NoMergeableRx bool             `json:"no_mergeable_rx,omitempty"`
	RxRateLimit   ratelimit.Config `json:"rx_rate_limit"`
	TxRateLimit   ratelimit.Config `json:"tx_rate_limit"`
	// Offered is the feature set offered when the snapshot was taken; a
	// restore on a backend that offers less is refused by the transport if
	// the driver had accepted the difference.
	Offered uint64 `json:"offered"`
	// Status is the config-space link status.
	Status uint16 `json:"status"`
}

// State captures the device. Call it while the worker is stopped.
func (d *Device) State() State {
	d.cfgMu.Lock()
	status := d.config.status
	d.cfgMu.Unlock()
	return State{
		ID:            d.id,
		Backend:       d.bcfg,
		HostName:      d.hostName,
		MAC:           d.mac.String(),
		MTU:           d.mtu,
		QueueSize:     d.queueSize,
		NoMergeableRx: d.offered&FeatureMrgRxbuf == 0,
		RxRateLimit:   d.rxLimit,
		TxRateLimit:   d.txLimit,
		Offered:       d.offered,
		Status:        status,
	}
}

// RestoreOptions change what a restored device uses on this host.
type RestoreOptions struct {
	// HostDevName, when set, replaces the backend's interface (the TAP or
	// macvtap name; for a bridged TAP, the bridge), as Firecracker's
	// network_overrides do on PUT /snapshot/load.
	HostDevName string
	// Log receives the device's log lines; nil means slog.Default().
	Log *slog.Logger
}

// Restore makes a device from st, which it treats as untrusted (a state
// file can be corrupt), and opens its backend again. Restore the transport
// afterwards: it re-activates the device with the saved features.
func Restore(st State, opts RestoreOptions) (*Device, error) {
	mac, err := ParseMAC(st.MAC)
	if err != nil {
		return nil, fmt.Errorf("restore interface %s: %w", st.ID, err)
	}
	if st.Status&^statusLinkUp != 0 {
		return nil, fmt.Errorf("restore interface %s: unknown link status bits %#x", st.ID, st.Status)
	}
	if st.QueueSize == 0 {
		return nil, fmt.Errorf("restore interface %s: queue size 0", st.ID)
	}
	b := st.Backend
	if opts.HostDevName != "" {
		if b.Kind == BackendBridge {
			b.Bridge = opts.HostDevName
		} else {
			b.Name = opts.HostDevName
		}
	}
	cfg := Config{
		ID:            st.ID,
		MAC:           mac,
		MTU:           st.MTU,
		RxRateLimit:   st.RxRateLimit,
		TxRateLimit:   st.TxRateLimit,
		QueueSize:     st.QueueSize,
		NoMergeableRx: st.NoMergeableRx,
		Log:           opts.Log,
		// A driver that negotiated mergeable buffers keeps them.
		forceMergeable: st.Offered&FeatureMrgRxbuf != 0,
	}
	d, err := New(cfg, b)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if missing := st.Offered &^ d.offered; missing != 0 {
		d.log.Warn("virtio-net: restored backend offers fewer features than at snapshot time", "missing", FeatureString(missing))
	}
	d.cfgMu.Lock()
	d.config.status = st.Status
	d.cfgMu.Unlock()
	return d, nil
}
