package mmio

// Register offsets of virtio-mmio version 2 (virtio 1.2 §4.2.2, table
// "MMIO Device Register Layout"). Control registers are 32 bits wide.
const (
	regMagicValue        = 0x000
	regVersion           = 0x004
	regDeviceID          = 0x008
	regVendorID          = 0x00c
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	regQueueNotify       = 0x050
	regInterruptStatus   = 0x060
	regInterruptACK      = 0x064
	regStatus            = 0x070
	regQueueDescLow      = 0x080
	regQueueDescHigh     = 0x084
	regQueueDriverLow    = 0x090
	regQueueDriverHigh   = 0x094
	regQueueDeviceLow    = 0x0a0
	regQueueDeviceHigh   = 0x0a4
	regSHMSel            = 0x0ac
	regSHMLenLow         = 0x0b0
	regSHMLenHigh        = 0x0b4
	regSHMBaseLow        = 0x0b8
	regSHMBaseHigh       = 0x0bc
	regQueueReset        = 0x0c0
	regConfigGeneration  = 0x0fc
	regConfig            = 0x100
)

const (
	// MagicValue is "virt" in little-endian ASCII.
	MagicValue = 0x74726976
	// Version is the non-legacy virtio-mmio interface.
	Version = 2
	// VendorID is "VOLT" in little-endian ASCII; drivers do not interpret it.
	VendorID = 0x544c4f56

	// Size is the MMIO window of one device: registers, then its
	// configuration space from 0x100 up to the end of the page.
	Size = 0x1000
	// QueueNotifyOffset is where the driver writes a queue index to notify
	// it: the address (base + QueueNotifyOffset) to register an ioeventfd
	// on, with the queue index as its data match.
	QueueNotifyOffset = regQueueNotify
	// ConfigSpaceSize is the room for a device's configuration space.
	ConfigSpaceSize = Size - regConfig
)
