// Package vsock is Volt's virtio-vsock device (virtio 1.2 §5.10) with
// Firecracker's hybrid host side: the guest speaks AF_VSOCK, the host speaks
// AF_UNIX.
//
//   - Host-initiated: a client connects to the Unix socket at UDSPath, writes
//     "CONNECT <port>\n", and once the guest's listener on <port> accepts it
//     reads "OK <hostport>\n"; the socket then carries the byte stream.
//   - Guest-initiated: a guest connection to CID 2 (the host), port N, is
//     forwarded to a Unix socket listening at "<UDSPath>_<N>"; the guest gets
//     an RST when nobody listens there.
//
// The package is split as Firecracker's device is: packet.go (the 44-byte
// header, parsed with bounds from untrusted guest memory), txbuf.go and
// conn.go (one state machine per connection with its own bounded buffer for
// credit-based flow control), muxer.go (the Unix sockets, the CONNECT
// handshake, port allocation, the kill timers) and state.go (snapshot state).
//
// Everything runs on one worker goroutine per device (Run), which waits in
// one epoll set for the queue notifications, the connection timers and
// every host socket: no socket operation blocks, so a slow or vanished host
// client never stalls the VMM or another connection. A connection whose
// host reader stalls stops the guest through credit (its buffer is bounded
// by the buf_alloc it advertises), never by blocking.
//
// Snapshots: the device's State is its guest CID and host socket path; the
// transport saves features and queues. A restored device (NewFromState,
// optionally with a new path: Firecracker's vsock_override) sends the guest
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on its first Run: the guest closes the
// snapshot's connections, its listeners survive. Because a guest may handle
// its rx packets before that event, host-initiated REQUESTs wait until the
// guest re-posts an event buffer (Linux does so right after handling the
// reset), at most resetAckTimeout, and a restored device's host ports start
// at a random point of their range so as not to reuse a stale tuple.
package vsock
