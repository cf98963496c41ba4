package virtio

import "fmt"

// DeviceType is a virtio device ID (§5): what the MMIO DeviceID register
// reports.
type DeviceType uint32

// The device types Volt implements.
const (
	DeviceNet     DeviceType = 1
	DeviceBlock   DeviceType = 2
	DeviceEntropy DeviceType = 4
	DeviceVsock   DeviceType = 19
)

func (t DeviceType) String() string {
	switch t {
	case DeviceNet:
		return "net"
	case DeviceBlock:
		return "block"
	case DeviceEntropy:
		return "entropy"
	case DeviceVsock:
		return "vsock"
	}
	return fmt.Sprintf("device-type(%d)", uint32(t))
}

// Feature bits reserved for the queue and negotiation mechanisms (§6).
// Device-specific bits (0–23) are defined by each device package.
const (
	FeatureIndirectDesc     = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx         = 1 << 29 // VIRTIO_F_EVENT_IDX
	FeatureVersion1         = 1 << 32 // VIRTIO_F_VERSION_1: required by virtio-mmio version 2
	FeatureAccessPlatform   = 1 << 33 // VIRTIO_F_ACCESS_PLATFORM (not offered: no IOMMU)
	FeatureRingPacked       = 1 << 34 // VIRTIO_F_RING_PACKED (not offered: split rings only)
	FeatureInOrder          = 1 << 35 // VIRTIO_F_IN_ORDER (not offered)
	FeatureOrderPlatform    = 1 << 36 // VIRTIO_F_ORDER_PLATFORM (not offered)
	FeatureNotificationData = 1 << 38 // VIRTIO_F_NOTIFICATION_DATA (not offered: QueueNotify carries the index)
	FeatureRingReset        = 1 << 40 // VIRTIO_F_RING_RESET (not offered)
)

// QueueFeatures are the transport/queue features this package implements;
// a device offers them in addition to its own bits (FeatureVersion1 is
// always needed).
const QueueFeatures = FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx

// Device status bits (§2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Interrupt status bits (the MMIO InterruptStatus register, §4.2.2).
const (
	InterruptUsedBuffer   = 1 << 0
	InterruptConfigChange = 1 << 1
)
