package net

import (
	"fmt"
	"strings"

	"github.com/voltvmm/volt/vmm/netdev"
)

// Feature bits of the network device (virtio 1.2 §5.1.3) and the generic
// ones it uses (§6).
const (
	FeatureCsum        = 0  // VIRTIO_NET_F_CSUM: the driver may send partial checksums
	FeatureGuestCsum   = 1  // VIRTIO_NET_F_GUEST_CSUM: the device may deliver partial checksums
	FeatureMTU         = 3  // VIRTIO_NET_F_MTU: config.mtu is valid
	FeatureMAC         = 5  // VIRTIO_NET_F_MAC: config.mac is valid
	FeatureGuestTSO4   = 7  // the device may deliver TCPv4 super-frames
	FeatureGuestTSO6   = 8  // ... TCPv6
	FeatureGuestECN    = 9  // ... with ECN
	FeatureHostTSO4    = 11 // the driver may send TCPv4 super-frames
	FeatureHostTSO6    = 12 // ... TCPv6
	FeatureHostECN     = 13 // ... with ECN
	FeatureMrgRxbuf    = 15 // VIRTIO_NET_F_MRG_RXBUF: a frame may span several receive buffers
	FeatureStatus      = 16 // VIRTIO_NET_F_STATUS: config.status is valid
	FeatureRingEventID = 29 // VIRTIO_F_RING_EVENT_IDX (generic)
	FeatureVersion1    = 32 // VIRTIO_F_VERSION_1 (generic)
)

var featureNames = map[uint]string{
	FeatureCsum: "csum", FeatureGuestCsum: "guest_csum", FeatureMTU: "mtu", FeatureMAC: "mac",
	FeatureGuestTSO4: "guest_tso4", FeatureGuestTSO6: "guest_tso6", FeatureGuestECN: "guest_ecn",
	FeatureHostTSO4: "host_tso4", FeatureHostTSO6: "host_tso6", FeatureHostECN: "host_ecn",
	FeatureMrgRxbuf: "mrg_rxbuf", FeatureStatus: "status", FeatureRingEventID: "event_idx",
	FeatureVersion1: "version_1",
}

// FeatureString names the bits of f, for logs.
func FeatureString(f uint64) string {
	var names []string
	for bit := uint(0); bit < 64; bit++ {
		if f&(1<<bit) == 0 {
			continue
		}
		if n, ok := featureNames[bit]; ok {
			names = append(names, n)
		} else {
			names = append(names, fmt.Sprintf("bit%d", bit))
		}
	}
	return strings.Join(names, ",")
}

// offeredFeatures is what the device offers for a backend that accepts the
// offload set tap (on its receive side) and a configuration with or without
// an MTU. Transmit offloads (CSUM, HOST_TSO*) need only the virtio-net
// header on the TAP, which every backend has; receive offloads are offered
// only where TUNSETOFFLOAD accepted them, so that the TAP never hands us a
// frame the guest cannot take. eventIdx says whether the transport
// implements VIRTIO_F_RING_EVENT_IDX.
func offeredFeatures(tap netdev.Offload, withMTU, eventIdx bool) uint64 {
	f := uint64(1)<<FeatureVersion1 | 1<<FeatureMAC | 1<<FeatureStatus | 1<<FeatureMrgRxbuf |
		1<<FeatureCsum | 1<<FeatureHostTSO4 | 1<<FeatureHostTSO6 | 1<<FeatureHostECN
	if withMTU {
		f |= 1 << FeatureMTU
	}
	if eventIdx {
		f |= 1 << FeatureRingEventID
	}
	if tap&netdev.OffloadCsum != 0 {
		f |= 1 << FeatureGuestCsum
		if tap&netdev.OffloadTSO4 != 0 {
			f |= 1 << FeatureGuestTSO4
		}
		if tap&netdev.OffloadTSO6 != 0 {
			f |= 1 << FeatureGuestTSO6
		}
		if tap&netdev.OffloadTSOECN != 0 && tap&(netdev.OffloadTSO4|netdev.OffloadTSO6) != 0 {
			f |= 1 << FeatureGuestECN
		}
	}
	return f
}

// checkAcked enforces the dependencies between features that virtio 1.2
// §5.1.3.1 puts on the driver; a driver that breaks them does not get
// FEATURES_OK.
func checkAcked(acked uint64) error {
	has := func(b uint) bool { return acked&(1<<b) != 0 }
	if !has(FeatureVersion1) {
		return fmt.Errorf("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	deps := []struct {
		bit   uint
		needs []uint
	}{
		{FeatureGuestTSO4, []uint{FeatureGuestCsum}},
		{FeatureGuestTSO6, []uint{FeatureGuestCsum}},
		{FeatureGuestECN, []uint{FeatureGuestTSO4, FeatureGuestTSO6}},
		{FeatureHostTSO4, []uint{FeatureCsum}},
		{FeatureHostTSO6, []uint{FeatureCsum}},
		{FeatureHostECN, []uint{FeatureHostTSO4, FeatureHostTSO6}},
	}
	for _, d := range deps {
		if !has(d.bit) {
			continue
		}
		ok := false
		for _, n := range d.needs {
			ok = ok || has(n)
		}
		if !ok {
			return fmt.Errorf("driver accepted %s without %s", featureNames[d.bit], featureNames[d.needs[0]])
		}
	}
	return nil
}

// tapOffloadFor is the TUNSETOFFLOAD set matching the receive features the
// driver accepted.
func tapOffloadFor(acked uint64) netdev.Offload {
	var o netdev.Offload
	if acked&(1<<FeatureGuestCsum) == 0 {
		return 0
	}
	o |= netdev.OffloadCsum
	if acked&(1<<FeatureGuestTSO4) != 0 {
		o |= netdev.OffloadTSO4
	}
	if acked&(1<<FeatureGuestTSO6) != 0 {
		o |= netdev.OffloadTSO6
	}
	if acked&(1<<FeatureGuestECN) != 0 && o&(netdev.OffloadTSO4|netdev.OffloadTSO6) != 0 {
		o |= netdev.OffloadTSOECN
	}
	return o
}
