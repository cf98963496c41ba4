package netdev

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ifreqCall runs one interface ioctl on a throw-away socket of the calling
// thread's network namespace.
func ifreqCall(name string, req uint, fill func(*unix.Ifreq)) (*unix.Ifreq, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, err
	}
	if fill != nil {
		fill(ifr)
	}
	if err := unix.IoctlIfreq(s, req, ifr); err != nil {
		return nil, err
	}
	return ifr, nil
}

// LinkIndex returns the interface index of name (SIOCGIFINDEX).
func LinkIndex(name string) (int, error) {
	ifr, err := ifreqCall(name, unix.SIOCGIFINDEX, nil)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// SetLinkUp sets IFF_UP on name; an interface already up is left alone.
func SetLinkUp(name string) error {
	ifr, err := ifreqCall(name, unix.SIOCGIFFLAGS, nil)
	if err != nil {
		return fmt.Errorf("interface %s: read flags: %w", name, err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	if _, err := ifreqCall(name, unix.SIOCSIFFLAGS, func(r *unix.Ifreq) { r.SetUint16(flags | unix.IFF_UP) }); err != nil {
		return fmt.Errorf("interface %s: bring up: %w", name, err)
	}
	return nil
}

// AttachToBridge makes the interface port a port of bridge (SIOCBRADDIF).
// The bridge must already exist: its addresses, DHCP and NAT are the host's
// network policy (systemd-networkd, the pool), which a VMM has no business
// inventing, and a bridge made here would outlive the VMM with nobody to
// remove it.
func AttachToBridge(bridge, port string) error {
	idx, err := LinkIndex(port)
	if err != nil {
		return fmt.Errorf("attach to bridge %s: %w", bridge, err)
	}
	_, err = ifreqCall(bridge, unix.SIOCBRADDIF, func(r *unix.Ifreq) { r.SetUint32(uint32(idx)) })
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("bridge %s does not exist: create it first (ip link add %s type bridge && ip link set %s up, or a systemd-networkd .netdev): %w", bridge, bridge, bridge, err)
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("interface %s is not a bridge: %w", bridge, err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%s is already a port of a bridge or bond: %w", port, err)
	}
	return fmt.Errorf("attach %s to bridge %s: %w", port, bridge, err)
}

// BridgedTapPattern is the name pattern for TAPs made for a bridge: the
// kernel replaces %d by the first free number.
const BridgedTapPattern = "volt%d"

// OpenBridgedTap creates a TAP (named by pattern, BridgedTapPattern when
// empty), attaches it to bridge and brings it up. The TAP is not
// persistent: when the VMM exits it disappears and leaves the bridge.
func OpenBridgedTap(bridge, pattern string) (*Tap, error) {
	if err := ValidateName(bridge); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	if _, err := LinkIndex(bridge); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("bridge %s does not exist: create it first (ip link add %s type bridge && ip link set %s up, or a systemd-networkd .netdev)", bridge, bridge, bridge)
		}
		return nil, err
	}
	if pattern == "" {
		pattern = BridgedTapPattern
	}
	t, err := OpenTap(pattern)
	if err != nil {
		return nil, err
	}
	if !t.Created() {
		name := t.Name()
		t.Close()
		return nil, fmt.Errorf("TAP %s for bridge %s already existed: a bridged TAP must be new, use --net tap=%s to reuse one", name, bridge, name)
	}
	if err := AttachToBridge(bridge, t.Name()); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}
