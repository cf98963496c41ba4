// Package virtio holds the transport-independent half of virtio 1.2 (§2,
// "Basic Facilities of a Virtio Device"): feature and status bits, split
// virtqueues (§2.7) with every descriptor chain validated against guest
// memory, and the Device interface that a device type (block, entropy, net,
// vsock) implements so that a transport (package virtio/mmio) can drive it.
//
// The guest is untrusted. Everything read from its rings and descriptor
// tables is copied once, checked (ring indices, descriptor addresses and
// lengths, chain length, direction, indirect tables) and only then handed to
// the device as a Chain of buffers that are known to lie wholly in guest
// RAM. A malformed chain is an error that breaks the device (the transport
// sets DEVICE_NEEDS_RESET and logs it); it is never a panic or an access
// outside guest memory.
//
// Lifecycle of a device, as seen from this package:
//
//	transport                         device
//	---------                         ------
//	driver sets DRIVER_OK  ─────────► Activate(Activation)     validate, keep queues
//	start worker goroutine ─────────► Run(ctx)                 pop chains, push used, signal
//	Pause (snapshot)       ─ cancel ► Run returns nil
//	Resume                 ─────────► Run(ctx) again           scans every queue first
//	driver writes status 0 ─ cancel ► Run returns; Reset()     back to the state after New
package virtio
