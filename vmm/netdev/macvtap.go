package netdev

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Macvtap describes the interface behind an open macvtap queue.
type Macvtap struct {
	*Tap
	// Index is the macvtap interface's index; its character device is
	// /dev/tap<Index>.
	Index int
	// HardwareAddr is the macvtap interface's MAC. The lower device
	// delivers only frames addressed to it (and broadcasts), so the guest
	// should use the same address.
	HardwareAddr net.HardwareAddr
}

// OpenMacvtap opens a queue of the macvtap interface name (made beforehand,
// e.g. `ip link add link eth0 name mvtap0 type macvtap mode bridge`). The
// interface's character device number comes from sysfs, which must show
// the caller's network namespace (as under `ip netns exec`): it opens
// /dev/tap<ifindex> if that node is this device, and otherwise (no node,
// or another namespace's node under the same index) makes a private node,
// opens it and removes it again.
func OpenMacvtap(name string) (*Macvtap, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("macvtap %s: %w", name, err)
	}
	major, err := macvtapMajor()
	if err != nil {
		return nil, fmt.Errorf("macvtap %s: %w", name, err)
	}
	sysDev, sysErr := macvtapSysfsDev(name, iface)
	node := fmt.Sprintf("/dev/tap%d", iface.Index)
	fd, err := openMacvtapNode(node, major, sysDev, sysErr)
	if err != nil {
		return nil, fmt.Errorf("macvtap %s: %w", name, err)
	}
	if err := checkFeatures(fd, KindMacvtap, name); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if _, err := setIff(fd, name, tapFlags); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("macvtap %s: set flags: %w", name, err)
	}
	t := newTap(fd, name, KindMacvtap)
	if err := t.setup(); err != nil {
		t.Close()
		return nil, err
	}
	if err := SetLinkUp(name); err != nil {
		t.Close()
		return nil, err
	}
	return &Macvtap{Tap: t, Index: iface.Index, HardwareAddr: iface.HardwareAddr}, nil
}

// openMacvtapNode opens node when it is the interface's character device
// (sysDev, from sysfs), and otherwise a private node made from sysDev. The
// check matters: /dev/tapN is named by an interface index, which network
// namespaces reuse, so devtmpfs may hold another namespace's (or a deleted
// interface's) node under the name; and a path in /dev could be anything.
func openMacvtapNode(node string, major uint32, sysDev uint64, sysErr error) (int, error) {
	if sysErr != nil {
		// Without sysfs nothing ties /dev/tapN to our interface: in
		// another namespace the same index names another VM's macvtap.
		return -1, fmt.Errorf("cannot tell which device is this interface's (%v): run the VMM where /sys shows its own network namespace (ip netns exec mounts one)", sysErr)
	}
	var st unix.Stat_t
	err := unix.Stat(node, &st)
	var refused error
	switch {
	case err != nil && !errors.Is(err, unix.ENOENT):
		refused = fmt.Errorf("stat %s: %w", node, err)
	case err != nil:
		refused = fmt.Errorf("%s does not exist", node)
	case st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != major:
		refused = fmt.Errorf("%s is not a macvtap character device (mode %#o, device %d:%d; macvtap is major %d)", node, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), major)
	case st.Rdev != sysDev:
		refused = fmt.Errorf("%s is device %d:%d but the interface is %d:%d (another namespace's node, or a stale one)", node, unix.Major(st.Rdev), unix.Minor(st.Rdev), unix.Major(sysDev), unix.Minor(sysDev))
	default:
		fd, err := unix.Open(node, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", node, err)
		}
		return fd, nil
	}
	if unix.Major(sysDev) != major {
		return -1, fmt.Errorf("sysfs gives device %d:%d, not of macvtap (major %d)", unix.Major(sysDev), unix.Minor(sysDev), major)
	}
	dir, err := os.MkdirTemp("", "volt-macvtap-")
	if err != nil {
		return -1, fmt.Errorf("%v; private device node: %w", refused, err)
	}
	defer os.RemoveAll(dir)
	private := filepath.Join(dir, filepath.Base(node))
	if err := unix.Mknod(private, unix.S_IFCHR|0o600, int(sysDev)); err != nil {
		return -1, fmt.Errorf("%v; make a private node instead: %w", refused, err)
	}
	fd, err := unix.Open(private, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open private node for %s: %w", node, err)
	}
	return fd, nil
}

// macvtapSysfsDev reads the device number of name's character device from
// sysfs. sysfs shows the interfaces of the namespace it was mounted in,
// which need not be ours, so the entry is trusted only when its index and
// address are those our own namespace reports for the name.
func macvtapSysfsDev(name string, iface *net.Interface) (uint64, error) {
	base := filepath.Join("/sys/class/net", name)
	idx, err := readTrimmed(filepath.Join(base, "ifindex"))
	if err != nil {
		return 0, err
	}
	if idx != strconv.Itoa(iface.Index) {
		return 0, fmt.Errorf("/sys/class/net/%s is interface %s, ours is %d: /sys belongs to another network namespace", name, idx, iface.Index)
	}
	addr, err := readTrimmed(filepath.Join(base, "address"))
	if err != nil {
		return 0, err
	}
	if !strings.EqualFold(addr, iface.HardwareAddr.String()) {
		return 0, fmt.Errorf("/sys/class/net/%s has address %s, ours %s: /sys belongs to another network namespace", name, addr, iface.HardwareAddr)
	}
	dev, err := readTrimmed(filepath.Join(base, "macvtap", fmt.Sprintf("tap%d", iface.Index), "dev"))
	if err != nil {
		return 0, fmt.Errorf("%s is not a macvtap interface: %w", name, err)
	}
	maj, minor, ok := strings.Cut(dev, ":")
	if !ok {
		return 0, fmt.Errorf("sysfs device number %q is not MAJOR:MINOR", dev)
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(minor, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("sysfs device number %q is not MAJOR:MINOR", dev)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// macvtapMajor finds the macvtap character-device major in /proc/devices.
func macvtapMajor() (uint32, error) {
	f, err := os.Open("/proc/devices")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	inChar := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "Character devices:":
			inChar = true
			continue
		case line == "Block devices:":
			inChar = false
			continue
		}
		num, drv, ok := strings.Cut(line, " ")
		if !inChar || !ok || strings.TrimSpace(drv) != "macvtap" {
			continue
		}
		m, err := strconv.ParseUint(num, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("/proc/devices: %q: %w", line, err)
		}
		return uint32(m), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("/proc/devices: %w", err)
	}
	return 0, errors.New("the kernel has no macvtap driver (CONFIG_MACVTAP): no macvtap entry in /proc/devices")
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
