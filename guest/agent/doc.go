// Package agent is the protocol between a caller on the host and the agent
// inside a guest that runs commands for it, over one vsock stream per
// request (see README.md for the byte layout).
//
// The caller sends one request frame (the command's argv, optional standard
// input, a time limit); the agent answers with frames of standard output and
// standard error as the command writes them, then one exit frame with the
// status. Every frame is length-bounded, so both sides can parse untrusted
// bytes with a fixed buffer; the request's first bytes carry a magic and a
// version, so a mismatched peer is told so instead of misread.
//
// The protocol is small enough to implement in freestanding C (the probe
// guest) as well as in Go (volt-init, through Serve). The package imports
// nothing else of Volt's, so guests and callers link only it.
package agent

// Port is the vsock port the agent listens on. A number above 1023 lets an
// unprivileged agent bind it (Linux reserves vsock ports below 1024 to
// CAP_NET_BIND_SERVICE); 10240 (10×1024) stays clear of the ports other
// guest agents use by convention (Kata's agent on 1024, firecracker-
// containerd's on 10789), so a guest can run one of those beside ours.
const Port = 10240
