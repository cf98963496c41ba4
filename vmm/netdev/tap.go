// Package netdev opens the host side of a guest's network interface: a TAP
// device by name, the character device of a macvtap interface, or a fresh
// TAP attached to an existing bridge. Every backend is one non-blocking file
// descriptor that reads and writes Ethernet frames prefixed by a virtio-net
// header (IFF_VNET_HDR), so that checksum and segmentation offloads pass
// between the guest and the host kernel without being done in the VMM.
//
// All look-ups (interface index, flags, bridge membership) go through
// sockets and ioctls of the calling thread's network namespace, never through
// a path that could show another namespace's view.
package netdev

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Kind tells the backends apart in logs and snapshot state.
type Kind string

const (
	KindTap     Kind = "tap"
	KindMacvtap Kind = "macvtap"
)

// Offload is a set of TUN_F_* flags: the offloads the host kernel may leave
// undone in frames it hands to us (partial checksums, TSO super-frames).
// They are what the guest must accept on receive, so they are set to match
// the virtio-net GUEST_* features the driver acknowledged.
type Offload uint

const (
	OffloadCsum   Offload = unix.TUN_F_CSUM
	OffloadTSO4   Offload = unix.TUN_F_TSO4
	OffloadTSO6   Offload = unix.TUN_F_TSO6
	OffloadTSOECN Offload = unix.TUN_F_TSO_ECN
)

func (o Offload) String() string {
	if o == 0 {
		return "none"
	}
	s := ""
	for _, f := range []struct {
		bit  Offload
		name string
	}{{OffloadCsum, "csum"}, {OffloadTSO4, "tso4"}, {OffloadTSO6, "tso6"}, {OffloadTSOECN, "tso-ecn"}} {
		if o&f.bit != 0 {
			if s != "" {
				s += ","
			}
			s += f.name
		}
	}
	if rest := o &^ (OffloadCsum | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN); rest != 0 {
		if s != "" {
			s += ","
		}
		s += fmt.Sprintf("%#x", uint(rest))
	}
	return s
}

// VnetHdrSize is the virtio-net header every frame carries, in its
// VIRTIO_F_VERSION_1 layout (with num_buffers).
const VnetHdrSize = 12

// tapFlags are the only flags we open TAPs with: Ethernet frames, no packet
// information prefix, a virtio-net header.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// Tap is an open TAP or macvtap queue. Reads and writes never block: Read
// returns unix.EAGAIN when no frame is waiting, for the caller's event loop.
// The Tap owns its descriptor; Close releases it (and a TAP this process
// created disappears with it).
type Tap struct {
	// f owns the descriptor and registers it with Go's poller, so that a
	// worker can wait for a frame without an OS thread (RawConn) and be
	// woken by a deadline. fd is f's number, used for the ioctls and the
	// non-blocking reads and writes; it is valid until Close.
	f       *os.File
	fd      int
	name    string
	kind    Kind
	created bool
	// supported is what TUNSETOFFLOAD accepted when probed at open.
	supported Offload
}

// Fd is the descriptor, for poll(2) in tests and tools. It stays owned by
// the Tap and is valid until Close.
func (t *Tap) Fd() int { return t.fd }

// SyscallConn gives access to the descriptor through Go's poller: its Read
// method waits for readability without holding an OS thread.
func (t *Tap) SyscallConn() (syscall.RawConn, error) { return t.f.SyscallConn() }

// SetReadDeadline makes a wait in SyscallConn's Read return
// os.ErrDeadlineExceeded at d (a time in the past wakes it now); the zero
// time clears it.
func (t *Tap) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// Name is the host interface name (the kernel's choice when a pattern such
// as "volt%d" was asked for).
func (t *Tap) Name() string { return t.name }

// Kind reports which backend this is.
func (t *Tap) Kind() Kind { return t.kind }

// Created reports whether this process created the interface (it is not
// persistent and vanishes when the Tap is closed).
func (t *Tap) Created() bool { return t.created }

// SupportedOffloads is the largest offload set the device accepted.
func (t *Tap) SupportedOffloads() Offload { return t.supported }

// Read reads one frame, virtio-net header first. p must hold a whole frame
// (VnetHdrSize + 65535 bytes covers TSO super-frames): the kernel truncates
// a frame that does not fit. It returns unix.EAGAIN, unwrapped so that the
// hot path does not allocate, when nothing is waiting.
func (t *Tap) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(t.fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// Writev writes one frame gathered from iov (virtio-net header first). The
// errors are the kernel's, unwrapped: EINVAL or EFAULT for a frame it
// refuses (bad header, bad length), EAGAIN or ENOBUFS under pressure, EIO
// when the interface is down.
func (t *Tap) Writev(iov [][]byte) (int, error) {
	for {
		n, err := unix.Writev(t.fd, iov)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}

// SetOffload tells the kernel which offloads it may leave to the reader
// (TUNSETOFFLOAD). It must be a subset of SupportedOffloads.
func (t *Tap) SetOffload(o Offload) error {
	if err := unix.IoctlSetInt(t.fd, unix.TUNSETOFFLOAD, int(o)); err != nil {
		return fmt.Errorf("%s %s: set offloads %s: %w", t.kind, t.name, o, err)
	}
	return nil
}

// SetVnetHdrSize sets the length of the header prefixed to every frame
// (TUNSETVNETHDRSZ).
func (t *Tap) SetVnetHdrSize(n int) error {
	if err := unix.IoctlSetPointerInt(t.fd, unix.TUNSETVNETHDRSZ, n); err != nil {
		return fmt.Errorf("%s %s: set vnet header size %d: %w", t.kind, t.name, n, err)
	}
	return nil
}

// Close releases the descriptor. It is safe to call twice.
func (t *Tap) Close() error {
	if t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f, t.fd = nil, -1
	if err != nil {
		return fmt.Errorf("close %s %s: %w", t.kind, t.name, err)
	}
	return nil
}

// OpenTap opens the TAP interface name, creating it (not persistent, so it
// vanishes when the VMM exits) when it does not exist; a name with "%d"
// asks the kernel to pick a free one. The interface is brought up, the
// virtio-net header size is set and offloads are probed, then cleared until
// the guest's driver negotiates them.
func OpenTap(name string) (*Tap, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	_, lookErr := LinkIndex(name)
	if lookErr != nil && !errors.Is(lookErr, unix.ENODEV) {
		return nil, fmt.Errorf("open TAP: %w", lookErr)
	}
	existed := lookErr == nil
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun for TAP %s: %w (the host needs CONFIG_TUN, and the VMM CAP_NET_ADMIN to create a TAP)", name, err)
	}
	if err := checkFeatures(fd, KindTap, name); err != nil {
		unix.Close(fd)
		return nil, err
	}
	got, err := setIff(fd, name, tapFlags)
	if errors.Is(err, unix.EINVAL) && existed {
		// A persistent TAP made with multi_queue only accepts queues that
		// say so; one queue of it is as good as a single-queue TAP.
		got, err = setIff(fd, name, tapFlags|unix.IFF_MULTI_QUEUE)
	}
	if err != nil {
		unix.Close(fd)
		return nil, tapSetIffError(name, existed, err)
	}
	// Only now, attached, may the descriptor meet the poller: an unattached
	// TUN file polls as EPOLLERR, which the poller would remember.
	t := newTap(fd, got, KindTap)
	t.created = !existed
	if err := t.setup(); err != nil {
		t.Close()
		return nil, err
	}
	if err := SetLinkUp(t.name); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// newTap takes ownership of fd (open, non-blocking).
func newTap(fd int, name string, kind Kind) *Tap {
	return &Tap{f: os.NewFile(uintptr(fd), string(kind)+":"+name), fd: fd, name: name, kind: kind}
}

func tapSetIffError(name string, existed bool, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("TAP %s is in use by another process: %w", name, err)
	case errors.Is(err, unix.EINVAL) && existed:
		return fmt.Errorf("interface %s exists and is not a TAP device: %w", name, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("TAP %s: %w: creating a TAP needs CAP_NET_ADMIN; use one made beforehand (ip tuntap add %s mode tap user UID)", name, err, name)
	}
	return fmt.Errorf("attach TAP %s: %w", name, err)
}

// setIff issues TUNSETIFF and returns the interface name the kernel used.
func setIff(fd int, name string, flags uint16) (string, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return "", err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return "", err
	}
	return ifr.Name(), nil
}

// checkFeatures makes sure the device can carry a virtio-net header at all;
// without it offloads cannot be negotiated and large frames are lost.
func checkFeatures(fd int, kind Kind, name string) error {
	feats, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
	if err != nil {
		return fmt.Errorf("%s %s: TUNGETFEATURES: %w", kind, name, err)
	}
	if feats&unix.IFF_VNET_HDR == 0 || feats&unix.IFF_NO_PI == 0 || feats&unix.IFF_TAP == 0 {
		return fmt.Errorf("%s %s: the kernel's TAP lacks IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (features %#x)", kind, name, feats)
	}
	return nil
}

// setup sets the header size, probes the offloads the device accepts and
// leaves none enabled: a guest that did not negotiate TSO must never be
// handed a 64 KiB super-frame.
func (t *Tap) setup() error {
	if err := t.SetVnetHdrSize(VnetHdrSize); err != nil {
		return err
	}
	for _, o := range []Offload{
		OffloadCsum | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN,
		OffloadCsum | OffloadTSO4 | OffloadTSO6,
		OffloadCsum,
	} {
		if unix.IoctlSetInt(t.fd, unix.TUNSETOFFLOAD, int(o)) == nil {
			t.supported = o
			break
		}
	}
	return t.SetOffload(0)
}

// ValidateName rejects interface names the kernel would truncate or refuse,
// with a message naming the problem rather than a bare EINVAL.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("interface name is empty")
	}
	if len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface name %q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	for _, c := range name {
		if c == '/' || c == ':' || c <= ' ' || c > '~' {
			return fmt.Errorf("interface name %q contains %q", name, c)
		}
	}
	if name == "." || name == ".." {
		return fmt.Errorf("interface name %q is not allowed", name)
	}
	return nil
}
