package net

import (
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/netdev"
	"golang.org/x/sys/unix"
)

// pairBackend is a test backend: one end of a SOCK_SEQPACKET socket pair,
// which keeps frame boundaries as a TAP does and needs no privileges. The
// test holds the other end (peer) and plays the host's network. It is used
// for the device's own logic; the tests in tap_test.go use real TAPs.
type pairBackend struct {
	f         *os.File
	fd        int
	supported netdev.Offload
	mu        sync.Mutex
	offload   netdev.Offload
	// refuse makes Writev fail with this errno (0: accept).
	refuse syscall.Errno
}

func newPair(tb testing.TB, supported netdev.Offload) (*pairBackend, *os.File) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	for _, fd := range fds {
		// Room for a queue's worth of 64 KiB frames in flight.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	b := &pairBackend{f: os.NewFile(uintptr(fds[0]), "pair"), fd: fds[0], supported: supported}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	tb.Cleanup(func() { peer.Close() })
	return b, peer
}

func (b *pairBackend) Name() string                          { return "pair0" }
func (b *pairBackend) SupportedOffloads() netdev.Offload     { return b.supported }
func (b *pairBackend) SyscallConn() (syscall.RawConn, error) { return b.f.SyscallConn() }
func (b *pairBackend) SetReadDeadline(t time.Time) error     { return b.f.SetReadDeadline(t) }
func (b *pairBackend) Close() error                          { return b.f.Close() }

func (b *pairBackend) SetOffload(o netdev.Offload) error {
	if o&^b.supported != 0 {
		return unix.EINVAL
	}
	b.mu.Lock()
	b.offload = o
	b.mu.Unlock()
	return nil
}

func (b *pairBackend) currentOffload() netdev.Offload {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.offload
}

func (b *pairBackend) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(b.fd, p)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}

func (b *pairBackend) Writev(iov [][]byte) (int, error) {
	b.mu.Lock()
	refuse := b.refuse
	b.mu.Unlock()
	if refuse != 0 {
		return 0, refuse
	}
	return unix.Writev(b.fd, iov)
}

// peerSend injects a frame (header first) as the host network would.
func peerSend(tb testing.TB, peer *os.File, pkt []byte) {
	tb.Helper()
	rc, err := peer.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), pkt)
		return werr != unix.EAGAIN
	}); err != nil {
		tb.Fatal(err)
	}
	if werr != nil {
		tb.Fatalf("peer write: %v", werr)
	}
}

// peerRecv returns the next frame the device wrote, or fails after timeout.
func peerRecv(tb testing.TB, peer *os.File, timeout time.Duration) []byte {
	tb.Helper()
	buf := make([]byte, MaxPacketLen+1)
	peer.SetReadDeadline(time.Now().Add(timeout))
	defer peer.SetReadDeadline(time.Time{})
	n, err := peer.Read(buf)
	if err != nil {
		tb.Fatalf("peer read: %v", err)
	}
	return buf[:n]
}

// peerQuiet reports whether nothing arrives within d.
func peerQuiet(peer *os.File, d time.Duration) bool {
	buf := make([]byte, MaxPacketLen+1)
	peer.SetReadDeadline(time.Now().Add(d))
	defer peer.SetReadDeadline(time.Time{})
	_, err := peer.Read(buf)
	return err != nil
}
