package virtio

import (
	"context"
	"log/slog"
)

// Device is a virtio device type (block, entropy, net, vsock) as a
// transport drives it. The transport owns the registers, feature
// negotiation, the queues' configuration and the worker goroutine; the
// device owns what its requests mean.
//
// Concurrency: ReadConfig and WriteConfig are called on vCPU threads, also
// while Run is executing on the worker goroutine, so a device that changes
// its configuration space at run time locks it. Activate, Run and Reset are
// never called concurrently with one another.
type Device interface {
	// Type is the virtio device ID.
	Type() DeviceType
	// Features returns every feature bit the device offers, including the
	// queue features it supports (usually QueueFeatures). It must not
	// change while the device exists.
	Features() uint64
	// QueueMaxSizes returns one entry per virtqueue: its maximum size, a
	// power of two no larger than MaxQueueSize. Its length is the number of
	// queues and must not change.
	QueueMaxSizes() []uint16
	// ReadConfig fills data (1 to 8 bytes) from the device configuration
	// space at offset. Bytes past the end of the space read as zero.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig stores data at offset in the configuration space; the
	// device ignores writes to read-only fields.
	WriteConfig(offset uint64, data []byte)
	// Activate is called when the driver sets DRIVER_OK, with the
	// negotiated features and the queues. The device checks what it needs
	// (for example that its required queues are ready), keeps the
	// activation and returns; it starts no goroutines. An error breaks the
	// device (DEVICE_NEEDS_RESET).
	Activate(a Activation) error
	// Run is the device's worker. It processes the queues until ctx is
	// cancelled, then returns nil. It must start with a pass over every
	// queue, because Run is called again after a pause and a notification
	// may have been consumed before it. Any goroutine Run starts must have
	// exited when Run returns. A non-nil error means the device is broken
	// (typically a malformed descriptor chain): the transport logs it, sets
	// DEVICE_NEEDS_RESET and sends a configuration change interrupt.
	Run(ctx context.Context) error
	// Reset returns the device to its state after construction (Run is not
	// running). The transport resets the queues itself.
	Reset()
}

// Activation is what a device receives when the driver sets DRIVER_OK.
type Activation struct {
	// Features is the negotiated set: offered by the device and accepted
	// by the driver.
	Features uint64
	// Memory is guest RAM.
	Memory Memory
	// Queues has one entry per queue of QueueMaxSizes, in order. A queue
	// the driver did not make ready is present but not Ready (Pop returns
	// nothing for it). The queues belong to the worker until Run returns.
	Queues []*Queue
	// Notify[i] receives a value when the driver notifies queue i (an
	// ioeventfd or a QueueNotify write). Notifications are coalesced: one
	// value may stand for many. A notification is only a hint: after a
	// receive, drain the queue.
	Notify []<-chan struct{}
	// Interrupt raises the device's interrupt. Queues use it for used
	// buffer notifications (Queue.SignalUsed); devices call ConfigChanged
	// after changing their configuration space.
	Interrupt Interrupt
	// Log is the transport's logger, with the device's name attached.
	Log *slog.Logger
}

// Interrupt is how a device notifies the driver (§2.3). The transport
// implements it: it sets the matching InterruptStatus bit, then raises the
// interrupt line (irqfd, or a trigger for tests).
type Interrupt interface {
	UsedBuffer() error
	ConfigChanged() error
}
