package net

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/netdev/nettest"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
)

var (
	hostIP  = netip.MustParseAddr("10.88.0.1")
	guestIP = netip.MustParseAddr("10.88.0.2")
)

// tapDevice makes a device on backend b inside ns (the TAP is opened
// there) and a simulated guest for it.
func tapDevice(tb testing.TB, ns *nettest.NS, b BackendConfig, cfg Config) *simGuest {
	tb.Helper()
	if cfg.ID == "" {
		cfg.ID = "eth0"
	}
	cfg.forceMergeable = !cfg.NoMergeableRx
	if cfg.Log == nil {
		cfg.Log = testLogger(tb)
	}
	var d *Device
	if err := ns.Do(func() error {
		var err error
		d, err = New(cfg, b)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return newSimGuest(tb, d)
}

// arpRoundTrip sends an ARP request for target from the guest and waits
// for the host kernel's answer.
func arpRoundTrip(tb testing.TB, g *simGuest, target netip.Addr) nettest.ARPReply {
	tb.Helper()
	mac := g.dev.MAC()
	g.send(Header{}, nettest.ARPRequest(mac[:], guestIP, target), true)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		f, ok := g.tryRecv(time.Until(deadline))
		if !ok {
			break
		}
		if r, err := nettest.ParseARPReply(f.frame); err == nil {
			return r
		}
		// IPv6 router solicitations and the like: not ours.
		g.postRx(1)
	}
	tb.Fatalf("no ARP reply from %s (metrics %+v, device err %v)", target, g.dev.Metrics(), g.tr.Err())
	return nettest.ARPReply{}
}

// ping sends an ICMP echo of size bytes from the guest and waits for the
// reply.
func ping(tb testing.TB, g *simGuest, hostMAC net.HardwareAddr, seq uint16, size int) {
	tb.Helper()
	mac := g.dev.MAC()
	g.send(Header{}, nettest.ICMPEcho(mac[:], hostMAC, guestIP, hostIP, 0x4242, seq, size), true)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		f, ok := g.tryRecv(time.Until(deadline))
		if !ok {
			break
		}
		g.postRx(1)
		if nettest.IsICMPEchoReply(f.frame, 0x4242, seq) {
			if len(f.frame) != 14+20+8+size {
				tb.Errorf("echo reply of %d bytes, want %d", len(f.frame), 14+20+8+size)
			}
			return
		}
	}
	tb.Fatalf("no echo reply for seq %d (metrics %+v)", seq, g.dev.Metrics())
}

func TestFramesOutAndBackThroughATap(t *testing.T) {
	ns := nettest.New(t)
	g := tapDevice(t, ns, BackendConfig{Kind: BackendTap, Name: "vtap0"}, Config{MAC: testMAC, MTU: 9000})
	ns.IP("addr", "add", hostIP.String()+"/24", "dev", "vtap0")
	// Jumbo frames: the 8000-byte echo's reply comes back whole, spread
	// over mergeable buffers.
	ns.IP("link", "set", "vtap0", "mtu", "9000")
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	if g.features&(FeatureGuestTSO4|FeatureGuestTSO6|FeatureGuestCsum) != FeatureGuestTSO4|FeatureGuestTSO6|FeatureGuestCsum {
		t.Errorf("a kernel TAP should take checksum and TSO offloads; negotiated %s", FeatureString(g.features))
	}
	g.postRx(64)
	reply := arpRoundTrip(t, g, hostIP)
	if reply.SenderIP != hostIP || !bytes.Equal(reply.TargetMAC, testMAC[:]) {
		t.Fatalf("ARP reply %+v", reply)
	}
	for seq, size := range []int{56, 1400, 8000} {
		ping(t, g, reply.SenderMAC, uint16(seq), size)
	}
	g.waitTxUsed(4, wait) // counted before they are used
	m := g.dev.Metrics()
	if m.TxFrames < 4 || m.RxFrames < 4 || m.TxDroppedBackend+m.TxDroppedHeader+m.TxDroppedMalformed != 0 {
		t.Errorf("metrics %+v", m)
	}
}

func TestTapRefusalIsCountedNotFatal(t *testing.T) {
	ns := nettest.New(t)
	g := tapDevice(t, ns, BackendConfig{Kind: BackendTap, Name: "vtap0"}, Config{MAC: testMAC})
	ns.IP("addr", "add", hostIP.String()+"/24", "dev", "vtap0")
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	g.postRx(64)
	// A TSO frame our header check lets by (segment size set, header
	// length and checksum within the frame) but the kernel refuses: its
	// TCP header would start 10 bytes before the end of the frame.
	mac := g.dev.MAC()
	frame := nettest.ICMPEcho(mac[:], net.HardwareAddr{2, 0, 0, 0, 0, 1}, guestIP, hostIP, 1, 1, 18)
	g.send(Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: uint16(len(frame) - 10), CsumOffset: 0}, frame, true)
	g.waitTxUsed(1, wait)
	if m := g.dev.Metrics(); m.TxDroppedBackend != 1 || m.TxDroppedHeader != 0 || m.TxBackendErrors != 0 {
		t.Errorf("metrics %+v: want the frame refused by the TAP (EINVAL) and counted", m)
	}
	reply := arpRoundTrip(t, g, hostIP)
	if reply.SenderIP != hostIP {
		t.Fatalf("no working path after a refused frame: %+v", reply)
	}
	if g.needsReset() {
		t.Fatal("device broken by a refused frame")
	}
}

func TestBridgeAndMacvtapBackends(t *testing.T) {
	t.Run("bridge", func(t *testing.T) {
		ns := nettest.New(t)
		ns.IP("link", "add", "volt0", "type", "bridge")
		ns.IP("link", "set", "volt0", "up")
		ns.IP("addr", "add", hostIP.String()+"/24", "dev", "volt0")
		g := tapDevice(t, ns, BackendConfig{Kind: BackendBridge, Bridge: "volt0"}, Config{MAC: testMAC})
		if !strings.HasPrefix(g.dev.HostName(), "volt") || g.dev.HostName() == "volt0" {
			t.Errorf("bridged TAP named %q", g.dev.HostName())
		}
		if err := g.probe(wantAll); err != nil {
			t.Fatal(err)
		}
		g.postRx(64)
		// The bridge learns and forwards only once the port is
		// forwarding; without STP that is at once.
		r := arpRoundTrip(t, g, hostIP)
		ping(t, g, r.SenderMAC, 1, 100)
		if st := g.dev.State(); st.Backend.Kind != BackendBridge || st.Backend.Bridge != "volt0" || st.HostName != g.dev.HostName() {
			t.Errorf("state %+v", st)
		}
	})
	t.Run("macvtap", func(t *testing.T) {
		ns := nettest.New(t)
		ns.IP("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
		ns.IP("link", "set", "veth0", "up")
		ns.IP("link", "set", "veth1", "up")
		ns.IP("addr", "add", hostIP.String()+"/24", "dev", "veth1")
		ns.IP("link", "add", "link", "veth0", "name", "mvtap0", "type", "macvtap", "mode", "bridge")
		g := tapDevice(t, ns, BackendConfig{Kind: BackendMacvtap, Name: "mvtap0"}, Config{})
		var want net.HardwareAddr
		ns.Do(func() error {
			i, err := net.InterfaceByName("mvtap0")
			if err == nil {
				want = i.HardwareAddr
			}
			return err
		})
		if mac := g.dev.MAC(); !bytes.Equal(mac[:], want) {
			t.Errorf("guest MAC %s, want the macvtap's %s", mac, want)
		}
		if err := g.probe(wantAll); err != nil {
			t.Fatal(err)
		}
		g.postRx(64)
		r := arpRoundTrip(t, g, hostIP)
		ping(t, g, r.SenderMAC, 1, 1000)
	})
}

// TestSnapshotRestoreReopensTheTapByName takes a device's and transport's
// state, throws the device away and restores both in another network
// namespace holding a TAP of the same name (as the pool's clones do); the
// guest's rings carry on where they were.
func TestSnapshotRestoreReopensTheTapByName(t *testing.T) {
	ns1 := nettest.New(t)
	ns1.IP("tuntap", "add", "vtap0", "mode", "tap")
	ns1.IP("addr", "add", hostIP.String()+"/24", "dev", "vtap0")
	g := tapDevice(t, ns1, BackendConfig{Kind: BackendTap, Name: "vtap0"}, Config{MAC: testMAC, MTU: 1500})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	g.postRx(32)
	r := arpRoundTrip(t, g, hostIP)
	ping(t, g, r.SenderMAC, 1, 64)

	g.tr.Pause()
	trState, err := g.tr.State()
	if err != nil {
		t.Fatal(err)
	}
	devState := g.dev.State()
	if devState.MAC != testMAC.String() || devState.Backend.Name != "vtap0" || devState.MTU != 1500 {
		t.Fatalf("state %+v", devState)
	}
	g.tr.Close()
	g.dev.Close()

	ns2 := nettest.New(t)
	ns2.IP("tuntap", "add", "vtap0", "mode", "tap")
	ns2.IP("addr", "add", hostIP.String()+"/24", "dev", "vtap0")
	var d2 *Device
	if err := ns2.Do(func() error {
		var err error
		d2, err = Restore(devState, RestoreOptions{Log: testLogger(t)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	tr2, err := mmio.New(d2, mmio.Config{Name: "virtio-net-restored", Memory: g.mem, IRQ: g.irq, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr2.Close() })
	if err := tr2.Restore(trState); err != nil {
		t.Fatal(err)
	}
	tr2.Resume()
	g.tr, g.dev = tr2, d2
	if d2.MAC() != testMAC {
		t.Errorf("restored MAC %s", d2.MAC())
	}
	g.postRx(8)
	r = arpRoundTrip(t, g, hostIP)
	ping(t, g, r.SenderMAC, 2, 64)
}

func TestRestoreRefusesBadState(t *testing.T) {
	good := State{ID: "eth0", Backend: BackendConfig{Kind: BackendTap, Name: "vtap0"}, MAC: testMAC.String(), QueueSize: 256, Status: statusLinkUp,
		Offered: virtio.QueueFeatures}
	for _, tc := range []struct {
		name string
		edit func(*State)
		want string
	}{
		{"bad MAC", func(s *State) { s.MAC = "zz" }, "MAC"},
		{"multicast MAC", func(s *State) { s.MAC = "01:00:5e:00:00:01" }, "multicast"},
		{"status bits", func(s *State) { s.Status = 0x80 }, "status"},
		{"queue size 0", func(s *State) { s.QueueSize = 0 }, "queue size"},
		{"queue size not a power of two", func(s *State) { s.QueueSize = 300 }, "power of two"},
		{"no backend", func(s *State) { s.Backend = BackendConfig{} }, "backend"},
		{"bad MTU", func(s *State) { s.MTU = 10 }, "MTU"},
	} {
		st := good
		tc.edit(&st)
		d, err := Restore(st, RestoreOptions{Log: testLogger(t)})
		if err == nil {
			d.Close()
			t.Errorf("%s: restored", tc.name)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
