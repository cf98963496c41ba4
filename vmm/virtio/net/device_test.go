package net

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/netdev"
	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
	"golang.org/x/sys/unix"
)

const (
	fullOffload = netdev.OffloadCsum | netdev.OffloadTSO4 | netdev.OffloadTSO6 | netdev.OffloadTSOECN
	wantAll     = ^uint64(0)
	wait        = 5 * time.Second
)

var testMAC = MAC{0x02, 0x42, 0, 0, 0, 0x01}

// pairDevice is a device over a socket pair with a simulated guest.
func pairDevice(tb testing.TB, supported netdev.Offload, cfg Config) (*simGuest, *pairBackend, *os.File) {
	tb.Helper()
	b, peer := newPair(tb, supported)
	if cfg.ID == "" {
		cfg.ID = "eth0"
	}
	if cfg.MAC.IsZero() {
		cfg.MAC = testMAC
	}
	// The multi-buffer receive path is tested whether or not the queue
	// can publish many used entries at once (see usedPublisher).
	cfg.forceMergeable = !cfg.NoMergeableRx
	if cfg.Log == nil {
		cfg.Log = testLogger(tb)
	}
	d, err := NewWithBackend(cfg, b)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return newSimGuest(tb, d), b, peer
}

// ethFrame is a minimal Ethernet frame of n bytes (n >= 14).
func ethFrame(n int, fill byte) []byte {
	f := make([]byte, n)
	copy(f, []byte{0x02, 0, 0, 0, 0, 0x99})
	copy(f[6:], testMAC[:])
	binary.BigEndian.PutUint16(f[12:], 0x88b5) // local experimental ethertype
	for i := 14; i < n; i++ {
		f[i] = fill + byte(i)
	}
	return f
}

func packet(h Header, frame []byte) []byte {
	p := make([]byte, HeaderSize+len(frame))
	h.Encode(p)
	copy(p[HeaderSize:], frame)
	return p
}

func TestProbeNegotiatesOffloadsTheBackendAccepts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		supported netdev.Offload
		want      netdev.Offload
		rxFeat    uint64
	}{
		{"no receive offloads", 0, 0, 0},
		{"checksum only", netdev.OffloadCsum, netdev.OffloadCsum, FeatureGuestCsum},
		{"everything", fullOffload, fullOffload, FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, b, _ := pairDevice(t, tc.supported, Config{MTU: 1400})
			offered := g.offered()
			guestRx := FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN
			if offered&guestRx != tc.rxFeat {
				t.Errorf("receive offloads offered %s, want %s", FeatureString(offered&guestRx), FeatureString(tc.rxFeat))
			}
			for _, f := range []uint64{virtio.FeatureVersion1, FeatureMAC, FeatureStatus, FeatureMTU, FeatureMrgRxbuf, FeatureCsum, FeatureHostTSO4, FeatureHostTSO6} {
				if offered&f == 0 {
					t.Errorf("%s not offered (offered %s)", FeatureString(f), FeatureString(offered))
				}
			}
			if err := g.probe(wantAll); err != nil {
				t.Fatal(err)
			}
			if got := b.currentOffload(); got != tc.want {
				t.Errorf("backend offloads %s after DRIVER_OK, want %s", got, tc.want)
			}
			cfg := g.config(0, ConfigSize)
			if !bytes.Equal(cfg[:6], testMAC[:]) {
				t.Errorf("config MAC % x, want %s", cfg[:6], testMAC)
			}
			if st := binary.LittleEndian.Uint16(cfg[6:]); st != statusLinkUp {
				t.Errorf("config status %#x, want link up", st)
			}
			if mtu := binary.LittleEndian.Uint16(cfg[10:]); mtu != 1400 {
				t.Errorf("config MTU %d, want 1400", mtu)
			}
			// A reset takes the offloads back: a new driver may accept fewer.
			g.w32(regStatus, 0)
			if got := b.currentOffload(); got != 0 {
				t.Errorf("backend offloads %s after reset, want none", got)
			}
			if err := g.probe(virtio.FeatureVersion1 | FeatureMAC); err != nil {
				t.Fatal(err)
			}
			if got := b.currentOffload(); got != 0 {
				t.Errorf("backend offloads %s for a driver without GUEST_CSUM, want none", got)
			}
		})
	}
}

func TestFeatureDependenciesAreEnforced(t *testing.T) {
	for _, acked := range []uint64{
		virtio.FeatureVersion1 | FeatureGuestTSO4,             // without GUEST_CSUM
		virtio.FeatureVersion1 | FeatureCsum | FeatureHostECN, // without HOST_TSO
		virtio.FeatureVersion1 | FeatureGuestCsum | FeatureGuestECN,
	} {
		g, _, _ := pairDevice(t, fullOffload, Config{})
		g.w32(regStatus, 0)
		err := g.probeExact(acked)
		if err == nil && !g.needsReset() {
			t.Errorf("driver accepting %s got a working device", FeatureString(acked))
		}
	}
}

func TestTxFramesReachTheBackend(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		hdr   Header
		frame []byte
		split bool
		want  Header
	}{
		{Header{}, ethFrame(60, 1), true, Header{}},
		{Header{NumBuffers: 5, Flags: HdrFDataValid}, ethFrame(1514, 2), false, Header{}},
		{Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, ethFrame(200, 3), true, Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}},
		{Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, ethFrame(65000, 4), true,
			Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}},
	} {
		g.send(tc.hdr, tc.frame, tc.split)
		pkt := peerRecv(t, peer, wait)
		h, _ := DecodeHeader(pkt)
		if h != tc.want || !bytes.Equal(pkt[HeaderSize:], tc.frame) {
			t.Errorf("frame %d: backend got header %+v and %d bytes, want %+v and %d bytes", i, h, len(pkt)-HeaderSize, tc.want, len(tc.frame))
		}
	}
	g.waitTxUsed(4, wait)
	if m := g.dev.Metrics(); m.TxFrames != 4 || m.TxBytes != 60+1514+200+65000 {
		t.Errorf("metrics %+v, want 4 frames of %d bytes", m, 60+1514+200+65000)
	}
}

// Linux sends a frame as an indirect chain when INDIRECT_DESC is
// negotiated (header, linear part, page fragments).
func TestTxIndirectChain(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	if g.features&virtio.FeatureIndirectDesc == 0 {
		t.Fatal("INDIRECT_DESC not negotiated")
	}
	frame := ethFrame(3000, 5)
	hdr := Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}
	base := memory.GuestAddr(simTxBase + 100*simTxSlot)
	var h [HeaderSize]byte
	hdr.Encode(h[:])
	g.mem.Write(base, h[:])
	// The frame in three pieces, out of order in memory.
	pieces := []struct {
		at   memory.GuestAddr
		data []byte
	}{{base + 0x4000, frame[:100]}, {base + 0x1000, frame[100:2000]}, {base + 0x8000, frame[2000:]}}
	bufs := []simDesc{{addr: base, len: HeaderSize}}
	for _, p := range pieces {
		g.mem.Write(p.at, p.data)
		bufs = append(bufs, simDesc{addr: p.at, len: uint32(len(p.data))})
	}
	if _, ok := g.rings[txQueue].addIndirect(base+0xc000, bufs); !ok {
		t.Fatal("ring full")
	}
	g.tr.Notify(txQueue)
	pkt := peerRecv(t, peer, wait)
	if got, _ := DecodeHeader(pkt); got != hdr || !bytes.Equal(pkt[HeaderSize:], frame) {
		t.Errorf("backend got header %+v and %d bytes, want %+v and the %d-byte frame", got, len(pkt)-HeaderSize, hdr, len(frame))
	}
	g.waitTxUsed(1, wait)
}

func TestTxMalformedChainsAreDroppedAndCounted(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	// No HOST_TSO6: a TSO6 frame breaks the negotiated features.
	if err := g.probe(wantAll &^ FeatureHostTSO6); err != nil {
		t.Fatal(err)
	}
	scratch := memory.GuestAddr(simTxBase + 200*simTxSlot)
	hdr := make([]byte, HeaderSize)
	(Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv6, HdrLen: 74, GSOSize: 1400, CsumStart: 54, CsumOffset: 16}).Encode(hdr)
	g.mem.Write(scratch+0x1000, hdr)
	for _, c := range []struct {
		name string
		bufs []simDesc
	}{
		{"device-writable buffer", []simDesc{{addr: scratch, len: HeaderSize}, {addr: scratch + 64, len: 100, write: true}}},
		{"shorter than the header", []simDesc{{addr: scratch, len: 8}}},
		{"header only", []simDesc{{addr: scratch, len: HeaderSize}}},
		{"runt frame", []simDesc{{addr: scratch, len: HeaderSize + 10}}},
		{"TSO6 not negotiated", []simDesc{{addr: scratch + 0x1000, len: HeaderSize}, {addr: scratch + 0x2000, len: 9000}}},
		{"longer than 64 KiB", []simDesc{{addr: scratch, len: HeaderSize}, {addr: scratch + 0x2000, len: MaxFrameLen + 1}}},
	} {
		g.sendRaw(c.bufs)
	}
	good := ethFrame(100, 7)
	g.send(Header{}, good, true)
	pkt := peerRecv(t, peer, wait)
	if !bytes.Equal(pkt[HeaderSize:], good) {
		t.Errorf("backend got %d bytes, want the good frame only", len(pkt))
	}
	if !peerQuiet(peer, 50*time.Millisecond) {
		t.Error("a malformed frame reached the backend")
	}
	used := g.waitTxUsed(7, wait)
	for _, u := range used {
		if u.len != 0 {
			t.Errorf("transmit chain %d used with length %d, want 0", u.head, u.len)
		}
	}
	m := g.dev.Metrics()
	// Not a header and a frame: writable, short, too long. A header and a
	// frame that the header rules refuse: empty, runt, TSO6.
	if m.TxDroppedMalformed != 3 || m.TxDroppedHeader != 3 || m.TxFrames != 1 {
		t.Errorf("metrics %+v: want 3 malformed, 3 refused by the header check, 1 sent", m)
	}
	if g.needsReset() {
		t.Errorf("device broken by droppable frames: %v", g.tr.Err())
	}
}

func TestTxChainThatBreaksTheQueueBreaksOnlyTheDevice(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(g *simGuest)
		want  string
	}{
		{"descriptor loop", func(g *simGuest) {
			r := g.rings[txQueue]
			d := r.desc + 16*5
			g.mem.WriteUint64(d, simTxBase)
			g.mem.WriteUint32(d+8, 64)
			g.mem.WriteUint16(d+12, descFNext)
			g.mem.WriteUint16(d+14, 5) // itself
			g.mem.WriteUint16(r.avail+4+2*memory.GuestAddr(r.availIdx%r.size), 5)
			r.availIdx++
			g.mem.WriteUint16(r.avail+2, r.availIdx)
			g.tr.Notify(txQueue)
		}, "longer than"},
		{"buffer outside RAM", func(g *simGuest) {
			g.sendRaw([]simDesc{{addr: simMemSize - 8, len: 64}})
		}, "out of bounds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, _, _ := pairDevice(t, fullOffload, Config{})
			if err := g.probe(wantAll); err != nil {
				t.Fatal(err)
			}
			tc.build(g)
			deadline := time.Now().Add(wait)
			for !g.needsReset() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if !g.needsReset() {
				t.Fatal("device not marked DEVICE_NEEDS_RESET")
			}
			if err := g.tr.Err(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("device error %v, want %q", err, tc.want)
			}
			// The driver's way out: reset and probe again.
			if err := g.probe(wantAll); err != nil {
				t.Fatalf("re-probe after reset: %v", err)
			}
		})
	}
}

func TestTxFrameTheBackendRefusesIsDropped(t *testing.T) {
	g, b, peer := pairDevice(t, 0, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.refuse = unix.EINVAL
	b.mu.Unlock()
	g.send(Header{}, ethFrame(100, 1), true)
	g.waitTxUsed(1, wait)
	b.mu.Lock()
	b.refuse = 0
	b.mu.Unlock()
	good := ethFrame(90, 2)
	g.send(Header{}, good, true)
	if pkt := peerRecv(t, peer, wait); !bytes.Equal(pkt[HeaderSize:], good) {
		t.Errorf("backend got %d bytes, want the second frame", len(pkt))
	}
	g.waitTxUsed(1, wait)
	if m := g.dev.Metrics(); m.TxDroppedBackend != 1 || m.TxBackendErrors != 0 || m.TxFrames != 1 {
		t.Errorf("metrics %+v: want one refused frame (EINVAL, the frame's fault) and one sent", m)
	}
}

func TestRxWaitsForBuffersThenDelivers(t *testing.T) {
	g, _, peer := pairDevice(t, 0, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	frames := [][]byte{ethFrame(60, 1), ethFrame(1514, 2), ethFrame(300, 3)}
	for _, f := range frames {
		peerSend(t, peer, packet(Header{}, f))
	}
	if _, ok := g.tryRecv(50 * time.Millisecond); ok {
		t.Fatal("a frame arrived without a posted buffer")
	}
	g.postRx(8)
	for i, want := range frames {
		got := g.recv(wait)
		if !bytes.Equal(got.frame, want) || got.buffers != 1 || got.hdr.Flags != 0 || got.hdr.GSOType != 0 {
			t.Errorf("frame %d: got %d bytes in %d buffers, header %+v; want %d bytes in 1", i, len(got.frame), got.buffers, got.hdr, len(want))
		}
	}
	if m := g.dev.Metrics(); m.RxFrames != 3 || m.RxNoBuffers == 0 {
		t.Errorf("metrics %+v: want 3 frames and at least one wait for buffers", m)
	}
}

func TestRxMergeableFrameSpansBuffers(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	if g.features&FeatureMrgRxbuf == 0 || g.rxBufSize != 4096 {
		t.Fatalf("mergeable buffers not negotiated: %s", FeatureString(g.features))
	}
	g.postRx(64)
	hdr := Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	big := ethFrame(60000, 9)
	peerSend(t, peer, packet(hdr, big))
	small := ethFrame(64, 1)
	peerSend(t, peer, packet(Header{}, small))
	got := g.recv(wait)
	wantBufs := (HeaderSize + len(big) + 4095) / 4096
	want := hdr
	want.NumBuffers = uint16(wantBufs)
	if got.hdr != want || got.buffers != wantBufs || !bytes.Equal(got.frame, big) {
		t.Errorf("got header %+v, %d buffers, %d bytes; want %+v, %d buffers, %d bytes", got.hdr, got.buffers, len(got.frame), want, wantBufs, len(big))
	}
	if got := g.recv(wait); got.buffers != 1 || !bytes.Equal(got.frame, small) {
		t.Errorf("second frame: %d buffers, %d bytes", got.buffers, len(got.frame))
	}
}

func TestRxMergeableFrameWaitsForEnoughBuffers(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	big := ethFrame(20000, 5) // five 4 KiB buffers
	peerSend(t, peer, packet(Header{}, big))
	g.postRx(2)
	if _, ok := g.tryRecv(50 * time.Millisecond); ok {
		t.Fatal("frame delivered into too few buffers")
	}
	g.postRx(10)
	if got := g.recv(wait); got.buffers != 5 || !bytes.Equal(got.frame, big) {
		t.Errorf("got %d buffers and %d bytes, want 5 and %d", got.buffers, len(got.frame), len(big))
	}
}

func TestRxHeldBuffersAreNotKeptAcrossAPause(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	big := ethFrame(20000, 5)
	peerSend(t, peer, packet(Header{}, big))
	g.postRx(2)
	deadline := time.Now().Add(wait)
	for g.dev.Metrics().RxNoBuffers == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	g.tr.Pause()
	// Whatever the device took it gave back: used, or still available.
	r := g.rings[rxQueue]
	st, err := g.tr.State()
	if err != nil {
		t.Fatal(err)
	}
	qs := st.Queues[rxQueue]
	if qs.NextAvail != qs.NextUsed {
		t.Errorf("paused with %d receive chains consumed but not used", qs.NextAvail-qs.NextUsed)
	}
	for _, u := range r.reap() {
		if u.len != 0 {
			t.Errorf("buffer %d returned with %d bytes", u.head, u.len)
		}
	}
	g.tr.Resume()
	g.postRx(10)
	if got := g.recv(wait); !bytes.Equal(got.frame, big) {
		t.Errorf("after resume got %d bytes, want the %d-byte frame", len(got.frame), len(big))
	}
}

func TestRxOversizedFrameIsDroppedWithoutMergeableBuffers(t *testing.T) {
	g, _, peer := pairDevice(t, 0, Config{NoMergeableRx: true})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	if g.features&FeatureMrgRxbuf != 0 {
		t.Fatal("MRG_RXBUF offered with NoMergeableRx")
	}
	g.postRx(4)
	peerSend(t, peer, packet(Header{}, ethFrame(3000, 1)))
	small := ethFrame(100, 2)
	peerSend(t, peer, packet(Header{}, small))
	got := g.recv(wait)
	if !bytes.Equal(got.frame, small) || got.buffers != 1 {
		t.Errorf("got %d bytes, want the small frame", len(got.frame))
	}
	if m := g.dev.Metrics(); m.RxDroppedTooBig != 1 || m.RxFrames != 1 {
		t.Errorf("metrics %+v: want one frame dropped as too big", m)
	}
}

func TestRxHeaderFollowsNegotiatedOffloads(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	// Checksum offload, no TSO: a super-frame cannot be delivered, and
	// DATA_VALID is passed on.
	if err := g.probe(wantAll &^ (FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN)); err != nil {
		t.Fatal(err)
	}
	g.postRx(16)
	peerSend(t, peer, packet(Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, ethFrame(9000, 1)))
	peerSend(t, peer, packet(Header{Flags: HdrFDataValid}, ethFrame(80, 2)))
	got := g.recv(wait)
	if got.hdr.Flags != HdrFDataValid || len(got.frame) != 80 {
		t.Errorf("got header %+v with %d bytes, want DATA_VALID and the small frame", got.hdr, len(got.frame))
	}
	if m := g.dev.Metrics(); m.RxDroppedOffload != 1 {
		t.Errorf("metrics %+v: want the TSO frame dropped", m)
	}
}

func TestRateLimitersDelayButDeliver(t *testing.T) {
	slow := ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 1, RefillTime: 20 * time.Millisecond}}
	g, _, peer := pairDevice(t, 0, Config{RxRateLimit: slow, TxRateLimit: slow})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	g.postRx(16)
	const n = 5
	for i := range n {
		g.send(Header{}, ethFrame(100+i, byte(i)), true)
		peerSend(t, peer, packet(Header{}, ethFrame(200+i, byte(i))))
	}
	for i := range n {
		if pkt := peerRecv(t, peer, wait); len(pkt) != HeaderSize+100+i {
			t.Errorf("tx frame %d: %d bytes, frames out of order?", i, len(pkt))
		}
		if got := g.recv(wait); len(got.frame) != 200+i {
			t.Errorf("rx frame %d: %d bytes", i, len(got.frame))
		}
	}
	g.waitTxUsed(n, wait) // counted before they are used
	m := g.dev.Metrics()
	if m.TxThrottled == 0 || m.RxThrottled == 0 || m.TxFrames != n || m.RxFrames != n {
		t.Errorf("metrics %+v: want both directions throttled and every frame through", m)
	}
}

func TestPauseResumeKeepsTheDeviceWorking(t *testing.T) {
	g, _, peer := pairDevice(t, fullOffload, Config{})
	if err := g.probe(wantAll); err != nil {
		t.Fatal(err)
	}
	g.postRx(8)
	for round := range 3 {
		g.tr.Pause()
		peerSend(t, peer, packet(Header{}, ethFrame(70+round, 1)))
		g.send(Header{}, ethFrame(80+round, 2), true)
		g.tr.Resume()
		if got := g.recv(wait); len(got.frame) != 70+round {
			t.Errorf("round %d: received %d bytes", round, len(got.frame))
		}
		if pkt := peerRecv(t, peer, wait); len(pkt) != HeaderSize+80+round {
			t.Errorf("round %d: sent %d bytes", round, len(pkt))
		}
		g.waitTxUsed(1, wait)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "needs an id"},
		{Config{ID: "eth0", MAC: MAC{1, 2, 3, 4, 5, 6}}, "multicast"},
		{Config{ID: "eth0", MTU: 20}, "MTU"},
		{Config{ID: "eth0", QueueSize: 100}, "power of two"},
		{Config{ID: "eth0", TxRateLimit: ratelimit.Config{Ops: ratelimit.BucketConfig{Size: 5}}}, "tx rate limiter"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	for _, bc := range []struct {
		b    BackendConfig
		want string
	}{
		{BackendConfig{}, "missing"},
		{BackendConfig{Kind: "vde"}, "unknown"},
		{BackendConfig{Kind: BackendTap}, "needs an interface name"},
		{BackendConfig{Kind: BackendBridge}, "needs a bridge"},
		{BackendConfig{Kind: BackendMacvtap, Name: "m0", Bridge: "br0"}, "only used with the bridge"},
	} {
		if err := bc.b.Validate(); err == nil || !strings.Contains(err.Error(), bc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", bc.b, err, bc.want)
		}
	}
}

func TestMergeableBuffersOnlyWhereFramesPublishWhole(t *testing.T) {
	b, _ := newPair(t, fullOffload)
	d, err := NewWithBackend(Config{ID: "eth0", Log: testLogger(t)}, b)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := d.Features()&FeatureMrgRxbuf != 0; got != queueCanPublishMany() {
		t.Errorf("MRG_RXBUF offered = %v, but the queue publishes several used entries at once = %v", got, queueCanPublishMany())
	}
	if st := d.State(); st.NoMergeableRx == (d.Features()&FeatureMrgRxbuf != 0) {
		t.Errorf("state says no_mergeable_rx=%v with features %s", st.NoMergeableRx, FeatureString(d.Features()))
	}
}
