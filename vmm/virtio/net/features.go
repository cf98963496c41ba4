package net

import (
	"fmt"
	"strings"

	"github.com/voltvmm/volt/vmm/netdev"
	"github.com/voltvmm/volt/vmm/virtio"
)

// Feature bits of the network device (virtio 1.2 §5.1.3), as masks like the
// generic ones in package virtio.
const (
	FeatureCsum      uint64 = 1 << 0  // VIRTIO_NET_F_CSUM: the driver may send partial checksums
	FeatureGuestCsum uint64 = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM: the device may deliver partial checksums
	FeatureMTU       uint64 = 1 << 3  // VIRTIO_NET_F_MTU: config.mtu is valid
	FeatureMAC       uint64 = 1 << 5  // VIRTIO_NET_F_MAC: config.mac is valid
	FeatureGuestTSO4 uint64 = 1 << 7  // the device may deliver TCPv4 super-frames
	FeatureGuestTSO6 uint64 = 1 << 8  // ... TCPv6
	FeatureGuestECN  uint64 = 1 << 9  // ... with ECN
	FeatureHostTSO4  uint64 = 1 << 11 // the driver may send TCPv4 super-frames
	FeatureHostTSO6  uint64 = 1 << 12 // ... TCPv6
	FeatureHostECN   uint64 = 1 << 13 // ... with ECN
	FeatureMrgRxbuf  uint64 = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF: a frame may span several receive buffers
	FeatureStatus    uint64 = 1 << 16 // VIRTIO_NET_F_STATUS: config.status is valid
)

var featureNames = map[uint64]string{
	FeatureCsum: "csum", FeatureGuestCsum: "guest_csum", FeatureMTU: "mtu", FeatureMAC: "mac",
	FeatureGuestTSO4: "guest_tso4", FeatureGuestTSO6: "guest_tso6", FeatureGuestECN: "guest_ecn",
	FeatureHostTSO4: "host_tso4", FeatureHostTSO6: "host_tso6", FeatureHostECN: "host_ecn",
	FeatureMrgRxbuf: "mrg_rxbuf", FeatureStatus: "status",
	virtio.FeatureEventIdx: "event_idx", virtio.FeatureIndirectDesc: "indirect_desc",
	virtio.FeatureVersion1: "version_1",
}

// FeatureString names the bits of f, for logs.
func FeatureString(f uint64) string {
	var names []string
	for bit := uint(0); bit < 64; bit++ {
		if f&(1<<bit) == 0 {
			continue
		}
		if n, ok := featureNames[1<<bit]; ok {
			names = append(names, n)
		} else {
			names = append(names, fmt.Sprintf("bit%d", bit))
		}
	}
	return strings.Join(names, ",")
}

// offeredFeatures is what the device offers for a backend that accepts the
// offload set tap (on its receive side), with or without an MTU and
// mergeable receive buffers. Transmit offloads (CSUM, HOST_TSO*) need only
// the virtio-net header on the TAP, which every backend has; receive
// offloads are offered only where TUNSETOFFLOAD accepted them, so that the
// TAP never hands us a frame the guest cannot take. The queue features
// (VERSION_1, EVENT_IDX, INDIRECT_DESC) are the virtio package's.
func offeredFeatures(tap netdev.Offload, withMTU, mergeable bool) uint64 {
	f := virtio.QueueFeatures | FeatureMAC | FeatureStatus |
		FeatureCsum | FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN
	if withMTU {
		f |= FeatureMTU
	}
	if mergeable {
		f |= FeatureMrgRxbuf
	}
	if tap&netdev.OffloadCsum != 0 {
		f |= FeatureGuestCsum
		if tap&netdev.OffloadTSO4 != 0 {
			f |= FeatureGuestTSO4
		}
		if tap&netdev.OffloadTSO6 != 0 {
			f |= FeatureGuestTSO6
		}
		if tap&netdev.OffloadTSOECN != 0 && tap&(netdev.OffloadTSO4|netdev.OffloadTSO6) != 0 {
			f |= FeatureGuestECN
		}
	}
	return f
}

// checkAcked enforces the dependencies between features that virtio 1.2
// §5.1.3.1 puts on the driver; a driver that breaks them does not get
// FEATURES_OK.
func checkAcked(acked uint64) error {
	has := func(b uint64) bool { return acked&b != 0 }
	if !has(virtio.FeatureVersion1) {
		return fmt.Errorf("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	deps := []struct {
		bit   uint64
		needs []uint64
	}{
		{FeatureGuestTSO4, []uint64{FeatureGuestCsum}},
		{FeatureGuestTSO6, []uint64{FeatureGuestCsum}},
		{FeatureGuestECN, []uint64{FeatureGuestTSO4, FeatureGuestTSO6}},
		{FeatureHostTSO4, []uint64{FeatureCsum}},
		{FeatureHostTSO6, []uint64{FeatureCsum}},
		{FeatureHostECN, []uint64{FeatureHostTSO4, FeatureHostTSO6}},
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
	if acked&FeatureGuestCsum == 0 {
		return 0
	}
	o |= netdev.OffloadCsum
	if acked&FeatureGuestTSO4 != 0 {
		o |= netdev.OffloadTSO4
	}
	if acked&FeatureGuestTSO6 != 0 {
		o |= netdev.OffloadTSO6
	}
	if acked&FeatureGuestECN != 0 && o&(netdev.OffloadTSO4|netdev.OffloadTSO6) != 0 {
		o |= netdev.OffloadTSOECN
	}
	return o
}
