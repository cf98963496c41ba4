package net

import (
	"errors"
	"testing"

	"github.com/voltvmm/volt/vmm/netdev"
	"github.com/voltvmm/volt/vmm/virtio"
)

const (
	v1    = virtio.FeatureVersion1
	allTx = v1 | FeatureCsum | FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN
	allRx = v1 | FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Flags: 1, GSOType: GSOTCPv6 | GSOECN, HdrLen: 74, GSOSize: 1428, CsumStart: 54, CsumOffset: 16, NumBuffers: 3}
	b := make([]byte, HeaderSize)
	h.Encode(b)
	want := []byte{1, 0x84, 74, 0, 0x94, 0x05, 54, 0, 16, 0, 3, 0}
	if string(b) != string(want) {
		t.Fatalf("encoded % x, want % x", b, want)
	}
	got, err := DecodeHeader(b)
	if err != nil || got != h {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, h)
	}
	if _, err := DecodeHeader(b[:HeaderSize-1]); err == nil {
		t.Fatal("decoded a short header")
	}
}

func TestCheckTxHeader(t *testing.T) {
	tso4 := Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	for _, tc := range []struct {
		name  string
		h     Header
		len   int
		acked uint64
		want  error
		wantH Header
	}{
		{"plain", Header{}, 60, v1, nil, Header{}},
		{"unknown flags and num_buffers cleared", Header{Flags: 0xfe, NumBuffers: 7}, 60, v1, nil, Header{}},
		{"too short", Header{}, EthHeaderLen - 1, allTx, ErrFrameTooShort, Header{}},
		{"longest", Header{}, MaxFrameLen, allTx, nil, Header{}},
		{"too long", Header{}, MaxFrameLen + 1, allTx, ErrFrameTooLong, Header{}},
		{"csum", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 100, allTx, nil, Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}},
		{"csum not negotiated", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 100, v1, ErrCsumNotAgreed, Header{}},
		{"csum field ends at frame end", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 52, allTx, nil, Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}},
		{"csum field past frame end", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 51, allTx, ErrCsumOutOfFrame, Header{}},
		{"csum overflow", Header{Flags: HdrFNeedsCsum, CsumStart: 0xffff, CsumOffset: 0xffff}, MaxFrameLen, allTx, ErrCsumOutOfFrame, Header{}},
		{"tso4", tso4, 60000, allTx, nil, tso4},
		{"tso4 not negotiated", tso4, 60000, allTx &^ FeatureHostTSO4, ErrGSONotAgreed, Header{}},
		{"tso6 not negotiated", Header{Flags: 1, GSOType: GSOTCPv6, HdrLen: 74, GSOSize: 1428, CsumStart: 54, CsumOffset: 16}, 60000, allTx &^ FeatureHostTSO6, ErrGSONotAgreed, Header{}},
		{"ecn not negotiated", Header{Flags: 1, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, 60000, allTx &^ FeatureHostECN, ErrGSONotAgreed, Header{}},
		{"udp fragmentation never offered", Header{GSOType: GSOUDP, GSOSize: 1400}, 60000, allTx, ErrGSONotAgreed, Header{}},
		{"udp segmentation never offered", Header{GSOType: GSOUDPL4, GSOSize: 1400}, 60000, allTx, ErrGSONotAgreed, Header{}},
		{"unknown gso type", Header{GSOType: 0x42, GSOSize: 1400}, 60000, allTx, ErrGSONotAgreed, Header{}},
		{"zero segment size", Header{Flags: 1, GSOType: GSOTCPv4, HdrLen: 54, CsumStart: 34, CsumOffset: 16}, 60000, allTx, ErrGSOBadSize, Header{}},
		{"header length past frame", Header{Flags: 1, GSOType: GSOTCPv4, HdrLen: 2000, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, 1000, allTx, ErrGSOHdrOutOfFrame, Header{}},
	} {
		got, err := CheckTxHeader(tc.h, tc.len, tc.acked)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
			continue
		}
		if err == nil && got != tc.wantH {
			t.Errorf("%s: header %+v, want %+v", tc.name, got, tc.wantH)
		}
	}
}

func TestFixRxHeader(t *testing.T) {
	for _, tc := range []struct {
		name  string
		h     Header
		acked uint64
		want  Header
		err   error
	}{
		{"data-valid hidden without guest_csum", Header{Flags: HdrFDataValid}, v1, Header{}, nil},
		{"data-valid kept with guest_csum", Header{Flags: HdrFDataValid}, allRx, Header{Flags: HdrFDataValid}, nil},
		{"partial csum without guest_csum", Header{Flags: HdrFNeedsCsum}, v1, Header{}, ErrCsumNotAgreed},
		{"tso4 accepted", Header{Flags: 1, GSOType: GSOTCPv4, GSOSize: 1448, NumBuffers: 9}, allRx, Header{Flags: 1, GSOType: GSOTCPv4, GSOSize: 1448}, nil},
		{"tso6 not accepted", Header{Flags: 1, GSOType: GSOTCPv6, GSOSize: 1448}, allRx &^ FeatureGuestTSO6, Header{}, ErrGSONotAgreed},
		{"ecn not accepted", Header{Flags: 1, GSOType: GSOTCPv4 | GSOECN, GSOSize: 1448}, allRx &^ FeatureGuestECN, Header{}, ErrGSONotAgreed},
		{"udp never", Header{Flags: 1, GSOType: GSOUDPL4, GSOSize: 1448}, allRx, Header{}, ErrGSONotAgreed},
	} {
		got, err := FixRxHeader(tc.h, tc.acked)
		if !errors.Is(err, tc.err) || (err == nil && got != tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}

func TestOfferedFeaturesFollowTapOffloads(t *testing.T) {
	base := uint64(virtio.QueueFeatures | FeatureMAC | FeatureStatus | allTx)
	for _, tc := range []struct {
		name      string
		tap       netdev.Offload
		mtu       bool
		mergeable bool
		want      uint64
	}{
		{"no rx offloads", 0, false, false, base},
		{"csum only", netdev.OffloadCsum, false, false, base | FeatureGuestCsum},
		{"tso without csum is meaningless", netdev.OffloadTSO4, false, false, base},
		{"full", netdev.OffloadCsum | netdev.OffloadTSO4 | netdev.OffloadTSO6 | netdev.OffloadTSOECN, true, true,
			base | allRx | FeatureMTU | FeatureMrgRxbuf},
	} {
		if got := offeredFeatures(tc.tap, tc.mtu, tc.mergeable); got != tc.want {
			t.Errorf("%s: offered %s, want %s", tc.name, FeatureString(got), FeatureString(tc.want))
		}
	}
}

func TestCheckAcked(t *testing.T) {
	for _, tc := range []struct {
		acked uint64
		ok    bool
	}{
		{v1, true},
		{0, false},
		{allTx, true},
		{allRx, true},
		{v1 | FeatureGuestTSO4, false},
		{v1 | FeatureHostTSO6, false},
		{v1 | FeatureCsum | FeatureHostECN, false},
		{v1 | FeatureGuestCsum | FeatureGuestECN, false},
		{v1 | FeatureGuestCsum | FeatureGuestTSO6 | FeatureGuestECN, true},
	} {
		if err := checkAcked(tc.acked); (err == nil) != tc.ok {
			t.Errorf("checkAcked(%s) = %v, want ok=%v", FeatureString(tc.acked), err, tc.ok)
		}
	}
}

func TestTapOffloadFor(t *testing.T) {
	for _, tc := range []struct {
		acked uint64
		want  netdev.Offload
	}{
		{v1, 0},
		{FeatureGuestTSO4 | FeatureGuestTSO6, 0},
		{FeatureGuestCsum, netdev.OffloadCsum},
		{FeatureGuestCsum | FeatureGuestTSO4, netdev.OffloadCsum | netdev.OffloadTSO4},
		{allRx, netdev.OffloadCsum | netdev.OffloadTSO4 | netdev.OffloadTSO6 | netdev.OffloadTSOECN},
		{FeatureGuestCsum | FeatureGuestECN, netdev.OffloadCsum},
	} {
		if got := tapOffloadFor(tc.acked); got != tc.want {
			t.Errorf("tapOffloadFor(%s) = %s, want %s", FeatureString(tc.acked), got, tc.want)
		}
	}
}

func TestParseMAC(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want MAC
		ok   bool
	}{
		{"02:00:00:00:00:01", MAC{2, 0, 0, 0, 0, 1}, true},
		{"AA-bb-CC-dd-EE-f0", MAC{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0}, true},
		{"01:00:5e:00:00:01", MAC{}, false}, // multicast
		{"00:00:00:00:00:00", MAC{}, false},
		{"02:00:00:00:00", MAC{}, false},
		{"02:00:00:00:00:0g", MAC{}, false},
		{"02:00:00:00:00:001", MAC{}, false},
		{"", MAC{}, false},
	} {
		got, err := ParseMAC(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseMAC(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	m, err := RandomMAC()
	if err != nil || m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("RandomMAC() = %v, %v: want a locally administered unicast address", m, err)
	}
}

func TestConfigSpaceLayout(t *testing.T) {
	c := configSpace{mac: MAC{2, 1, 2, 3, 4, 5}, status: statusLinkUp, mtu: 1500}
	got := make([]byte, 16)
	c.read(0, got)
	want := []byte{2, 1, 2, 3, 4, 5, 1, 0, 1, 0, 0xdc, 0x05, 0, 0, 0, 0}
	if string(got) != string(want) {
		t.Fatalf("config % x, want % x", got, want)
	}
	part := make([]byte, 2)
	c.read(10, part)
	if part[0] != 0xdc || part[1] != 5 {
		t.Errorf("mtu read at 10 = % x", part)
	}
	c.read(1<<40, part)
	if part[0] != 0 || part[1] != 0 {
		t.Errorf("read far past the end = % x, want zeros", part)
	}
}

// FuzzTxHeader feeds guest-controlled header bytes and frame lengths through
// the transmit check: it must never panic, and whatever it lets through must
// be within the frame and the negotiated features.
func FuzzTxHeader(f *testing.F) {
	seed := make([]byte, HeaderSize)
	(Header{Flags: 1, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}).Encode(seed)
	f.Add(seed, 60000, uint64(allTx))
	f.Add(make([]byte, HeaderSize), 60, uint64(v1))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 65550, uint64(allTx))
	f.Fuzz(func(t *testing.T, b []byte, frameLen int, acked uint64) {
		h, err := DecodeHeader(b)
		if err != nil {
			return
		}
		out, err := CheckTxHeader(h, frameLen, acked)
		if err != nil {
			return
		}
		if frameLen < EthHeaderLen || frameLen > MaxFrameLen {
			t.Fatalf("accepted frame length %d", frameLen)
		}
		if out.Flags&^HdrFNeedsCsum != 0 || out.NumBuffers != 0 {
			t.Fatalf("passed flags %#x / num_buffers %d through", out.Flags, out.NumBuffers)
		}
		if out.Flags != 0 && (acked&FeatureCsum == 0 || int(out.CsumStart)+int(out.CsumOffset)+2 > frameLen) {
			t.Fatalf("accepted checksum request %+v for %d bytes, features %s", out, frameLen, FeatureString(acked))
		}
		if out.GSOType != GSONone {
			if out.GSOSize == 0 || int(out.HdrLen) > frameLen {
				t.Fatalf("accepted GSO header %+v for %d bytes", out, frameLen)
			}
			need := FeatureHostTSO4
			if out.GSOType&^GSOECN == GSOTCPv6 {
				need = FeatureHostTSO6
			} else if out.GSOType&^GSOECN != GSOTCPv4 {
				t.Fatalf("accepted GSO type %#x", out.GSOType)
			}
			if acked&need == 0 {
				t.Fatalf("accepted GSO type %#x without %s", out.GSOType, featureNames[need])
			}
		}
	})
}
