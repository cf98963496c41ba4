package net

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	stdnet "net"
	"net/netip"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/netdev/nettest"
)

// A TCP end point just big enough to talk to the host kernel's TCP through
// the device: handshake, in-order data, cumulative ACKs, FIN. It lets the
// tests push real streams through the offloads the device negotiates: the
// kernel hands TSO super-frames to a guest that accepted GUEST_TSO4, and
// takes them from one that negotiated HOST_TSO4.

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

type tcpSeg struct {
	src, dst   netip.Addr
	sport      uint16
	dport      uint16
	seq, ack   uint32
	flags      byte
	window     uint16
	mss        uint16 // option, SYN only
	payload    []byte
	gso        bool // from a frame with a GSO header
	frameBytes int
}

// tcpFrame builds an Ethernet/IPv4/TCP frame with full checksums.
func tcpFrame(srcMAC, dstMAC []byte, s tcpSeg) []byte {
	hl := 20
	if s.mss != 0 {
		hl += 4
	}
	tcp := make([]byte, hl+len(s.payload))
	binary.BigEndian.PutUint16(tcp[0:], s.sport)
	binary.BigEndian.PutUint16(tcp[2:], s.dport)
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	binary.BigEndian.PutUint32(tcp[8:], s.ack)
	tcp[12] = byte(hl/4) << 4
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], s.window)
	if s.mss != 0 {
		tcp[20], tcp[21] = 2, 4
		binary.BigEndian.PutUint16(tcp[22:], s.mss)
	}
	copy(tcp[hl:], s.payload)
	binary.BigEndian.PutUint16(tcp[16:], ^foldSum(pseudoSum(s.src, s.dst, len(tcp))+sum16(tcp)))
	f := append(append(append([]byte{}, dstMAC...), srcMAC...), 0x08, 0x00)
	f = append(f, nettest.IPv4Header(s.src, s.dst, 6, len(tcp))...)
	return append(f, tcp...)
}

// tsoFrame builds a TCP super-frame as a Linux guest sends one with
// HOST_TSO4: the checksum field holds the pseudo-header sum for the whole
// segment, to be completed per segment by whoever segments it.
func tsoFrame(srcMAC, dstMAC []byte, s tcpSeg, mss uint16) (Header, []byte) {
	f := tcpFrame(srcMAC, dstMAC, s)
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[16:], foldSum(pseudoSum(s.src, s.dst, len(tcp))))
	return Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: mss, CsumStart: 34, CsumOffset: 16}, f
}

func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func pseudoSum(src, dst netip.Addr, n int) uint32 {
	return sum16(src.AsSlice()) + sum16(dst.AsSlice()) + 6 + uint32(n)
}

func foldSum(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// parseTCP decodes an IPv4/TCP frame.
func parseTCP(f []byte) (tcpSeg, bool) {
	if len(f) < 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[14]>>4 != 4 || f[23] != 6 {
		return tcpSeg{}, false
	}
	ihl := int(f[14]&0xf) * 4
	total := int(binary.BigEndian.Uint16(f[16:]))
	if total > len(f)-14 || total < ihl+20 {
		return tcpSeg{}, false
	}
	ip := f[14 : 14+total]
	tcp := ip[ihl:]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return tcpSeg{}, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	return tcpSeg{
		src: src, dst: dst,
		sport: binary.BigEndian.Uint16(tcp[0:]), dport: binary.BigEndian.Uint16(tcp[2:]),
		seq: binary.BigEndian.Uint32(tcp[4:]), ack: binary.BigEndian.Uint32(tcp[8:]),
		flags: tcp[13], window: binary.BigEndian.Uint16(tcp[14:]),
		payload: tcp[off:],
	}, true
}

// guestStack answers ARP for guestIP and hands TCP segments to its caller.
type guestStack struct {
	tb      testing.TB
	g       *simGuest
	hostMAC []byte
}

// next returns the next TCP segment for the guest, answering ARP requests
// on the way.
func (s *guestStack) next(timeout time.Duration) tcpSeg {
	s.tb.Helper()
	deadline := time.Now().Add(timeout)
	mac := s.g.dev.MAC()
	for {
		f, ok := s.g.tryRecv(time.Until(deadline))
		if !ok {
			s.tb.Fatalf("no TCP segment within %v (metrics %+v, device err %v)", timeout, s.g.dev.Metrics(), s.g.tr.Err())
		}
		s.g.postRx(1)
		if len(f.frame) >= 42 && binary.BigEndian.Uint16(f.frame[12:]) == nettest.EtherTypeARP {
			a := f.frame[14:]
			if binary.BigEndian.Uint16(a[6:]) == 1 && bytes.Equal(a[24:28], guestIP.AsSlice()) {
				s.hostMAC = bytes.Clone(a[8:14])
				reply := make([]byte, 42)
				copy(reply, a[8:14])
				copy(reply[6:], mac[:])
				binary.BigEndian.PutUint16(reply[12:], nettest.EtherTypeARP)
				copy(reply[14:], a[:6])
				binary.BigEndian.PutUint16(reply[20:], 2)
				copy(reply[22:], mac[:])
				copy(reply[28:], guestIP.AsSlice())
				copy(reply[32:], a[8:18])
				s.g.send(Header{}, reply, true)
			}
			continue
		}
		seg, ok := parseTCP(f.frame)
		if !ok || seg.dst != guestIP {
			continue
		}
		seg.gso = f.hdr.GSOType != GSONone
		seg.frameBytes = len(f.frame)
		if s.hostMAC == nil {
			s.hostMAC = bytes.Clone(f.frame[6:12])
		}
		return seg
	}
}

func (s *guestStack) reply(seg tcpSeg) {
	mac := s.g.dev.MAC()
	s.g.send(Header{}, tcpFrame(mac[:], s.hostMAC, seg), true)
	s.g.rings[txQueue].reap()
}

// tcpGuest makes a device on a TAP in ns with the given features, the host
// end of the TAP at hostIP.
func tcpGuest(t *testing.T, want uint64) (*guestStack, *nettest.NS) {
	ns := nettest.New(t)
	g := tapDevice(t, ns, BackendConfig{Kind: BackendTap, Name: "vtap0"}, Config{MAC: testMAC, NoMergeableRx: true})
	ns.IP("addr", "add", hostIP.String()+"/24", "dev", "vtap0")
	if err := g.probe(want); err != nil {
		t.Fatal(err)
	}
	g.postRx(64)
	return &guestStack{tb: t, g: g}, ns
}

func TestTCPStreamToGuest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		want    uint64
		wantGSO bool
	}{
		{"with GUEST_TSO4", wantAll, true},
		{"without receive offloads", wantAll &^ (FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ns := tcpGuest(t, tc.want)
			data := make([]byte, 2<<20)
			rand.Read(data)
			hostErr := make(chan error, 1)
			go func() {
				hostErr <- ns.Do(func() error {
					c, err := stdnet.DialTimeout("tcp", netip.AddrPortFrom(guestIP, 7000).String(), wait)
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(30 * time.Second))
					_, err = c.Write(data)
					return err
				})
			}()
			syn := s.next(wait)
			if syn.flags&tcpSYN == 0 || syn.dport != 7000 {
				t.Fatalf("first segment %+v, want a SYN to port 7000", syn)
			}
			const iss = 1000
			s.reply(tcpSeg{src: guestIP, dst: hostIP, sport: 7000, dport: syn.sport, seq: iss, ack: syn.seq + 1,
				flags: tcpSYN | tcpACK, window: 65535, mss: 1460})
			next := syn.seq + 1
			var got []byte
			gso, largest := 0, 0
			for len(got) < len(data) {
				seg := s.next(wait)
				if seg.flags&tcpRST != 0 {
					t.Fatalf("host reset the connection after %d bytes", len(got))
				}
				if len(seg.payload) == 0 {
					continue
				}
				if seg.seq == next {
					got = append(got, seg.payload...)
					next += uint32(len(seg.payload))
				}
				if seg.gso {
					gso++
				}
				largest = max(largest, len(seg.payload))
				s.reply(tcpSeg{src: guestIP, dst: hostIP, sport: 7000, dport: syn.sport, seq: iss + 1, ack: next,
					flags: tcpACK, window: 65535})
			}
			if err := <-hostErr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("the guest received other bytes than the host sent")
			}
			if tc.wantGSO && (gso == 0 || largest <= 1460) {
				t.Errorf("no TSO super-frame reached the guest (largest payload %d)", largest)
			}
			if !tc.wantGSO && (gso != 0 || largest > 1460) {
				t.Errorf("%d GSO frames (largest payload %d) reached a guest without GUEST_TSO", gso, largest)
			}
			t.Logf("%d bytes, %d super-frames, largest payload %d", len(got), gso, largest)
		})
	}
}

func TestTCPStreamFromGuestWithTSO(t *testing.T) {
	s, ns := tcpGuest(t, wantAll)
	if s.g.features&FeatureHostTSO4 == 0 {
		t.Fatalf("HOST_TSO4 not negotiated: %s", FeatureString(s.g.features))
	}
	var ln stdnet.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = stdnet.Listen("tcp", netip.AddrPortFrom(hostIP, 7001).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := make([]byte, 1<<20)
	rand.Read(data)
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		b, _ := io.ReadAll(io.LimitReader(c, int64(len(data))))
		received <- b
	}()
	r := arpRoundTrip(t, s.g, hostIP)
	s.hostMAC = r.SenderMAC
	const iss, sport = 5000, 40000
	s.reply(tcpSeg{src: guestIP, dst: hostIP, sport: sport, dport: 7001, seq: iss, flags: tcpSYN, window: 65535, mss: 1460})
	synack := s.next(wait)
	if synack.flags != tcpSYN|tcpACK || synack.ack != iss+1 {
		t.Fatalf("got %+v, want SYN-ACK", synack)
	}
	rcvNxt := synack.seq + 1
	s.reply(tcpSeg{src: guestIP, dst: hostIP, sport: sport, dport: 7001, seq: iss + 1, ack: rcvNxt, flags: tcpACK, window: 65535})
	mac := s.g.dev.MAC()
	una, nxt := uint32(iss+1), uint32(iss+1)
	window := uint32(synack.window)
	const chunk = 60000
	for off := 0; int(una-(iss+1)) < len(data); {
		for off < len(data) && nxt-una+uint32(min(chunk, len(data)-off)) <= window {
			n := min(chunk, len(data)-off)
			hdr, f := tsoFrame(mac[:], s.hostMAC, tcpSeg{src: guestIP, dst: hostIP, sport: sport, dport: 7001,
				seq: nxt, ack: rcvNxt, flags: tcpACK | tcpPSH, window: 65535, payload: data[off : off+n]}, 1448)
			s.g.send(hdr, f, true)
			s.g.rings[txQueue].reap()
			off += n
			nxt += uint32(n)
		}
		ack := s.next(wait)
		if ack.flags&tcpRST != 0 {
			t.Fatal("host reset the connection")
		}
		if ack.flags&tcpACK != 0 && ack.ack-una <= nxt-una {
			una = ack.ack
			window = uint32(ack.window) // no window scaling was offered
		}
	}
	select {
	case got := <-received:
		if !bytes.Equal(got, data) {
			t.Fatalf("host read %d bytes, not the %d the guest sent", len(got), len(data))
		}
	case <-time.After(wait):
		t.Fatal("host did not read the stream")
	}
	if m := s.g.dev.Metrics(); m.TxDroppedBackend+m.TxDroppedHeader != 0 {
		t.Errorf("frames dropped: %+v", m)
	}
	t.Logf("%s", fmt.Sprintf("metrics %+v", s.g.dev.Metrics()))
}
