package netdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/netdev/nettest"
	"golang.org/x/sys/unix"
)

var (
	guestMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	hostIP   = netip.MustParseAddr("10.77.0.1")
	guestIP  = netip.MustParseAddr("10.77.0.2")
)

// readFrame waits up to timeout for a frame on t for which keep is true,
// skipping others (IPv6 router solicitations and the like), and returns it
// without its virtio-net header.
func readFrame(tb testing.TB, t *Tap, timeout time.Duration, keep func([]byte) bool) (hdr, frame []byte) {
	tb.Helper()
	buf := make([]byte, VnetHdrSize+65536)
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			tb.Fatalf("no matching frame on %s within %v", t.Name(), timeout)
		}
		fds := []unix.PollFd{{Fd: int32(t.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			tb.Fatalf("poll: %v", err)
		}
		n, err := t.Read(buf)
		if err == unix.EAGAIN {
			continue
		}
		if err != nil {
			tb.Fatalf("read %s: %v", t.Name(), err)
		}
		if n < VnetHdrSize {
			tb.Fatalf("read %d bytes, shorter than the vnet header", n)
		}
		if keep(buf[VnetHdrSize:n]) {
			return bytes.Clone(buf[:VnetHdrSize]), bytes.Clone(buf[VnetHdrSize:n])
		}
	}
}

func isARPReply(f []byte) bool { _, err := nettest.ParseARPReply(f); return err == nil }

func TestTapCreatedIsUpAndAnswersARP(t *testing.T) {
	ns := nettest.New(t)
	err := ns.Do(func() error {
		tap, err := OpenTap("vtap0")
		if err != nil {
			return err
		}
		defer tap.Close()
		if !tap.Created() || tap.Kind() != KindTap || tap.Name() != "vtap0" {
			t.Errorf("tap = %q kind %s created %v, want vtap0, tap, created", tap.Name(), tap.Kind(), tap.Created())
		}
		want := OffloadCsum | OffloadTSO4 | OffloadTSO6
		if got := tap.SupportedOffloads(); got&want != want {
			t.Errorf("supported offloads %s, want at least %s", got, want)
		}
		hdrSize, err := unix.IoctlGetInt(tap.Fd(), unix.TUNGETVNETHDRSZ)
		if err != nil || hdrSize != VnetHdrSize {
			t.Errorf("vnet header size %d (%v), want %d", hdrSize, err, VnetHdrSize)
		}
		ns.IP("addr", "add", hostIP.String()+"/24", "dev", "vtap0")
		if out := ns.IP("-o", "link", "show", "vtap0"); !strings.Contains(out, ",UP") {
			t.Errorf("vtap0 not up: %s", out)
		}
		hdr := make([]byte, VnetHdrSize)
		frame := nettest.ARPRequest(guestMAC, guestIP, hostIP)
		if n, err := tap.Writev([][]byte{hdr, frame}); err != nil || n != len(hdr)+len(frame) {
			t.Fatalf("writev = %d, %v", n, err)
		}
		_, reply := readFrame(t, tap, 5*time.Second, isARPReply)
		r, _ := nettest.ParseARPReply(reply)
		if r.SenderIP != hostIP || !bytes.Equal(r.TargetMAC, guestMAC) {
			t.Errorf("ARP reply %+v, want sender %s to %s", r, hostIP, guestMAC)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The TAP was ours and not persistent: closing it removed it.
	if out := ns.IP("-o", "link"); strings.Contains(out, "vtap0") {
		t.Errorf("vtap0 still exists after Close: %s", out)
	}
}

func TestTapOpensExistingPersistentTaps(t *testing.T) {
	ns := nettest.New(t)
	ns.IP("tuntap", "add", "ptap0", "mode", "tap")
	ns.IP("tuntap", "add", "mqtap0", "mode", "tap", "multi_queue")
	err := ns.Do(func() error {
		for _, name := range []string{"ptap0", "mqtap0"} {
			tap, err := OpenTap(name)
			if err != nil {
				return err
			}
			if tap.Created() {
				t.Errorf("%s: Created() = true for a TAP made beforehand", name)
			}
			tap.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Persistent TAPs survive our Close.
	out := ns.IP("-o", "link")
	for _, name := range []string{"ptap0", "mqtap0"} {
		if !strings.Contains(out, name) {
			t.Errorf("%s vanished after Close", name)
		}
	}
}

func TestTapOpenErrors(t *testing.T) {
	ns := nettest.New(t)
	ns.IP("link", "add", "br0", "type", "bridge")
	ns.IP("tuntap", "add", "tun0", "mode", "tun")
	err := ns.Do(func() error {
		busy, err := OpenTap("busy0")
		if err != nil {
			return err
		}
		defer busy.Close()
		for _, tc := range []struct {
			name, want string
		}{
			{"busy0", "in use by another process"},
			{"br0", "not a TAP"},
			{"tun0", "not a TAP"},
			{"", "empty"},
			{"a-name-far-too-long", "longer than"},
			{"bad/name", "contains"},
		} {
			tap, err := OpenTap(tc.name)
			if err == nil {
				tap.Close()
				t.Errorf("OpenTap(%q) succeeded, want an error with %q", tc.name, tc.want)
				continue
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("OpenTap(%q) = %v, want %q", tc.name, err, tc.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// vnetHdr builds a virtio-net header (little-endian, VERSION_1 layout).
func vnetHdr(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16) []byte {
	h := make([]byte, VnetHdrSize)
	h[0], h[1] = flags, gsoType
	binary.LittleEndian.PutUint16(h[2:], hdrLen)
	binary.LittleEndian.PutUint16(h[4:], gsoSize)
	binary.LittleEndian.PutUint16(h[6:], csumStart)
	binary.LittleEndian.PutUint16(h[8:], csumOffset)
	return h
}

// tcpFrame is an Ethernet/IPv4/TCP frame with payloadLen bytes of data and
// the TCP checksum left for the offload (pseudo-header sum only, as a
// guest driver with CSUM negotiated sends it).
func tcpFrame(payloadLen int) []byte {
	tcp := make([]byte, 20+payloadLen)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 9)
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // PSH|ACK
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	ip := nettest.IPv4Header(guestIP, hostIP, 6, len(tcp))
	f := append([]byte{}, net.HardwareAddr{0x02, 0, 0, 0, 0, 1}...)
	f = append(f, guestMAC...)
	f = binary.BigEndian.AppendUint16(f, nettest.EtherTypeIPv4)
	f = append(f, ip...)
	return append(f, tcp...)
}

func TestTapAcceptsGSOAndRefusesBadHeaders(t *testing.T) {
	ns := nettest.New(t)
	err := ns.Do(func() error {
		tap, err := OpenTap("gso0")
		if err != nil {
			return err
		}
		defer tap.Close()
		const needsCsum, gsoTCPv4 = 1, 1
		big := tcpFrame(60000)
		small := tcpFrame(100)
		for _, tc := range []struct {
			name  string
			hdr   []byte
			frame []byte
			ok    bool
		}{
			{"plain frame", vnetHdr(0, 0, 0, 0, 0, 0), small, true},
			{"partial checksum", vnetHdr(needsCsum, 0, 0, 0, 34, 16), small, true},
			{"TSO super-frame", vnetHdr(needsCsum, gsoTCPv4, 54, 1448, 34, 16), big, true},
			{"checksum past the end", vnetHdr(needsCsum, 0, 0, 0, uint16(len(small)-1), 16), small, false},
			{"header length past the end", vnetHdr(needsCsum, gsoTCPv4, 65000, 1448, 34, 16), small, false},
		} {
			n, err := tap.Writev([][]byte{tc.hdr, tc.frame})
			if tc.ok && (err != nil || n != len(tc.hdr)+len(tc.frame)) {
				t.Errorf("%s: writev = %d, %v, want it accepted", tc.name, n, err)
			}
			if !tc.ok && err == nil {
				t.Errorf("%s: writev = %d, want the kernel to refuse it", tc.name, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBridgedTap(t *testing.T) {
	ns := nettest.New(t)
	ns.IP("link", "add", "volt0", "type", "bridge")
	ns.IP("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	err := ns.Do(func() error {
		tap, err := OpenBridgedTap("volt0", "")
		if err != nil {
			return err
		}
		defer tap.Close()
		if !strings.HasPrefix(tap.Name(), "volt") || tap.Name() == "volt0" {
			t.Errorf("bridged TAP named %q, want volt<N> other than the bridge", tap.Name())
		}
		out := ns.IP("-o", "link", "show", "master", "volt0")
		if !strings.Contains(out, tap.Name()+":") {
			t.Errorf("%s is not a port of volt0: %s", tap.Name(), out)
		}
		for _, tc := range []struct{ bridge, want string }{
			{"nobr0", "does not exist"},
			{"veth0", "not a bridge"},
		} {
			tap, err := OpenBridgedTap(tc.bridge, "")
			if err == nil {
				tap.Close()
				t.Errorf("OpenBridgedTap(%s) succeeded", tc.bridge)
			} else if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("OpenBridgedTap(%s) = %v, want %q", tc.bridge, err, tc.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The refused attempts left no TAP behind.
	if out := ns.IP("-o", "link"); strings.Count(out, ": volt") != 1 {
		t.Errorf("want only the bridge volt0 left, got: %s", out)
	}
}

func TestMacvtapFrameOutAndBack(t *testing.T) {
	ns := nettest.New(t)
	ns.IP("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	ns.IP("link", "set", "veth0", "up")
	ns.IP("link", "set", "veth1", "up")
	ns.IP("addr", "add", hostIP.String()+"/24", "dev", "veth1")
	ns.IP("link", "add", "link", "veth0", "name", "mvtap0", "type", "macvtap", "mode", "bridge")
	err := ns.Do(func() error {
		mv, err := OpenMacvtap("mvtap0")
		if err != nil {
			return err
		}
		defer mv.Close()
		iface, err := net.InterfaceByName("mvtap0")
		if err != nil {
			return err
		}
		if mv.Index != iface.Index || !bytes.Equal(mv.HardwareAddr, iface.HardwareAddr) || mv.Kind() != KindMacvtap {
			t.Errorf("macvtap index %d mac %s kind %s, want %d %s macvtap", mv.Index, mv.HardwareAddr, mv.Kind(), iface.Index, iface.HardwareAddr)
		}
		checkMacvtapNodes(t, iface)
		frame := nettest.ARPRequest(mv.HardwareAddr, guestIP, hostIP)
		if _, err := mv.Writev([][]byte{make([]byte, VnetHdrSize), frame}); err != nil {
			return err
		}
		_, reply := readFrame(t, mv.Tap, 5*time.Second, isARPReply)
		if r, _ := nettest.ParseARPReply(reply); r.SenderIP != hostIP || !bytes.Equal(r.TargetMAC, mv.HardwareAddr) {
			t.Errorf("ARP reply %+v, want from %s to %s", r, hostIP, mv.HardwareAddr)
		}
		// A macvtap is not a TAP, and a TAP not a macvtap.
		if _, err := OpenMacvtap("veth0"); err == nil || !strings.Contains(err.Error(), "not a macvtap") {
			t.Errorf("OpenMacvtap(veth0) = %v, want 'not a macvtap'", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkMacvtapNodes opens iface's queue through each path openMacvtapNode
// knows: the node when it is right, a private node when /dev/tapN is
// missing or wrong (devtmpfs usually makes it, but under an index that
// other namespaces reuse), and an error without a trustworthy sysfs.
func checkMacvtapNodes(t *testing.T, iface *net.Interface) {
	major, err := macvtapMajor()
	if err != nil {
		t.Fatal(err)
	}
	dev, err := macvtapSysfsDev(iface.Name, iface)
	if err != nil {
		t.Fatalf("sysfs device of %s: %v", iface.Name, err)
	}
	dir := t.TempDir()
	right := dir + "/tap-right"
	stale := dir + "/tap-stale"
	null := dir + "/tap-null"
	regular := dir + "/tap-file"
	for path, dev := range map[string]uint64{right: dev, stale: unix.Mkdev(major, unix.Minor(dev)+100), null: unix.Mkdev(1, 3)} {
		if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(dev)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	noSysfs := errors.New("no sysfs")
	for _, tc := range []struct {
		name, node string
		sysErr     error
		want       string // "" means it opens
	}{
		{"right node", right, nil, ""},
		{"right node, no sysfs", right, noSysfs, "cannot tell which device"},
		{"missing node: private node", dir + "/tap-missing", nil, ""},
		{"stale node: private node", stale, nil, ""},
		{"regular file: private node", regular, nil, ""},
		{"missing node, no sysfs", dir + "/tap-missing", noSysfs, "cannot tell which device"},
		{"other device: private node", null, nil, ""},
	} {
		fd, err := openMacvtapNode(tc.node, major, dev, tc.sysErr)
		if err == nil {
			unix.Close(fd)
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestVhostNetDetection(t *testing.T) {
	ok, why := VhostNetAvailable()
	_, statErr := os.Stat(VhostNetPath)
	if ok && statErr != nil {
		t.Errorf("VhostNetAvailable() = true but %s: %v", VhostNetPath, statErr)
	}
	if !ok && !strings.Contains(why, "userspace") {
		t.Errorf("reason %q does not say which data path is used", why)
	}
	if errors.Is(statErr, os.ErrNotExist) && !strings.Contains(why, "absent") {
		t.Errorf("reason %q does not say %s is absent", why, VhostNetPath)
	}
	t.Log(why)
}

func TestOffloadString(t *testing.T) {
	for _, tc := range []struct {
		o    Offload
		want string
	}{
		{0, "none"},
		{OffloadCsum, "csum"},
		{OffloadCsum | OffloadTSO4 | OffloadTSO6, "csum,tso4,tso6"},
		{OffloadCsum | 0x100, "csum,0x100"},
	} {
		if got := tc.o.String(); got != tc.want {
			t.Errorf("%#x.String() = %q, want %q", uint(tc.o), got, tc.want)
		}
	}
}
