package net

import (
	"sync"
	"sync/atomic"
)

type counter = atomic.Uint64

// counters are updated by the workers and read by Metrics at any time.
type counters struct {
	rxFrames, rxBytes      counter
	rxThrottled            counter
	rxNoBuffers            counter
	rxDroppedMalformed     counter
	rxDroppedTooBig        counter
	rxDroppedOffload       counter
	rxBuffersReturnedEmpty counter
	txFrames, txBytes      counter
	txThrottled            counter
	txDroppedMalformed     counter
	txDroppedHeader        counter
	txDroppedBackend       counter
	txBackendErrors        counter

	// loggedDrops remembers which drop counters were logged at warning
	// level already: the first of each kind is worth a line, a flood is
	// not.
	loggedDrops sync.Map
}

// Metrics is a snapshot of the device's counters.
type Metrics struct {
	RxFrames uint64 `json:"rx_frames"`
	RxBytes  uint64 `json:"rx_bytes"`
	// RxThrottled counts waits for the RX rate limiter.
	RxThrottled uint64 `json:"rx_throttled"`
	// RxNoBuffers counts waits for the driver to post receive buffers.
	RxNoBuffers uint64 `json:"rx_no_buffers"`
	// RxDroppedMalformed: frames from the host too short to be Ethernet.
	RxDroppedMalformed uint64 `json:"rx_dropped_malformed"`
	// RxDroppedTooBig: frames no receive buffer could hold.
	RxDroppedTooBig uint64 `json:"rx_dropped_too_big"`
	// RxDroppedOffload: frames with an offload the guest did not accept.
	RxDroppedOffload uint64 `json:"rx_dropped_offload"`
	// RxBuffersReturnedEmpty: receive buffers handed back unused when the
	// worker stopped mid-frame.
	RxBuffersReturnedEmpty uint64 `json:"rx_buffers_returned_empty"`
	TxFrames               uint64 `json:"tx_frames"`
	TxBytes                uint64 `json:"tx_bytes"`
	// TxThrottled counts waits for the TX rate limiter.
	TxThrottled uint64 `json:"tx_throttled"`
	// TxDroppedMalformed: chains that are not a header and a frame.
	TxDroppedMalformed uint64 `json:"tx_dropped_malformed"`
	// TxDroppedHeader: frames whose header breaks the negotiated features.
	TxDroppedHeader uint64 `json:"tx_dropped_header"`
	// TxDroppedBackend: frames the host refused; TxBackendErrors those of
	// them refused for a reason other than the frame itself.
	TxDroppedBackend uint64 `json:"tx_dropped_backend"`
	TxBackendErrors  uint64 `json:"tx_backend_errors"`
}

// Metrics returns the device's counters. It is safe to call at any time.
func (d *Device) Metrics() Metrics {
	s := &d.stats
	return Metrics{
		RxFrames: s.rxFrames.Load(), RxBytes: s.rxBytes.Load(),
		RxThrottled: s.rxThrottled.Load(), RxNoBuffers: s.rxNoBuffers.Load(),
		RxDroppedMalformed: s.rxDroppedMalformed.Load(), RxDroppedTooBig: s.rxDroppedTooBig.Load(),
		RxDroppedOffload: s.rxDroppedOffload.Load(), RxBuffersReturnedEmpty: s.rxBuffersReturnedEmpty.Load(),
		TxFrames: s.txFrames.Load(), TxBytes: s.txBytes.Load(), TxThrottled: s.txThrottled.Load(),
		TxDroppedMalformed: s.txDroppedMalformed.Load(), TxDroppedHeader: s.txDroppedHeader.Load(),
		TxDroppedBackend: s.txDroppedBackend.Load(), TxBackendErrors: s.txBackendErrors.Load(),
	}
}

// logDrop logs the first drop counted by c as a warning and the rest at
// debug level.
func (d *Device) logDrop(c *counter, dir, why string, n int) {
	if _, seen := d.stats.loggedDrops.LoadOrStore(c, true); !seen {
		d.log.Warn("virtio-net: frame dropped (further drops of this kind are logged at debug level)", "dir", dir, "reason", why, "len", n)
		return
	}
	d.log.Debug("virtio-net: frame dropped", "dir", dir, "reason", why, "len", n)
}
