package nettest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Ethernet types used by the test frames.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
)

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// ARPRequest builds an Ethernet frame asking who has target, from src.
func ARPRequest(srcMAC net.HardwareAddr, srcIP, target netip.Addr) []byte {
	f := make([]byte, 0, 42)
	f = append(f, Broadcast...)
	f = append(f, srcMAC...)
	f = binary.BigEndian.AppendUint16(f, EtherTypeARP)
	f = binary.BigEndian.AppendUint16(f, 1)      // hardware type: Ethernet
	f = binary.BigEndian.AppendUint16(f, 0x0800) // protocol type: IPv4
	f = append(f, 6, 4)
	f = binary.BigEndian.AppendUint16(f, 1) // request
	f = append(f, srcMAC...)
	f = append(f, srcIP.AsSlice()...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	f = append(f, target.AsSlice()...)
	return f
}

// ARPReply is the answer found in a frame.
type ARPReply struct {
	SenderMAC net.HardwareAddr
	SenderIP  netip.Addr
	TargetMAC net.HardwareAddr
}

// ParseARPReply decodes frame as an ARP reply, or says why it is not one.
func ParseARPReply(frame []byte) (ARPReply, error) {
	if len(frame) < 42 {
		return ARPReply{}, fmt.Errorf("frame of %d bytes is too short for ARP", len(frame))
	}
	if et := binary.BigEndian.Uint16(frame[12:]); et != EtherTypeARP {
		return ARPReply{}, fmt.Errorf("ethertype %#04x is not ARP", et)
	}
	a := frame[14:]
	if op := binary.BigEndian.Uint16(a[6:]); op != 2 {
		return ARPReply{}, fmt.Errorf("ARP operation %d is not a reply", op)
	}
	ip, _ := netip.AddrFromSlice(a[14:18])
	return ARPReply{
		SenderMAC: bytes.Clone(a[8:14]),
		SenderIP:  ip,
		TargetMAC: bytes.Clone(a[18:24]),
	}, nil
}

// ICMPEcho builds an Ethernet/IPv4 ICMP echo request of payloadLen bytes
// with correct checksums.
func ICMPEcho(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, id, seq uint16, payloadLen int) []byte {
	icmp := make([]byte, 8+payloadLen)
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	for i := range payloadLen {
		icmp[8+i] = byte(i)
	}
	binary.BigEndian.PutUint16(icmp[2:], Checksum(icmp))
	ip := IPv4Header(src, dst, 1, len(icmp))
	f := make([]byte, 0, 14+len(ip)+len(icmp))
	f = append(f, dstMAC...)
	f = append(f, srcMAC...)
	f = binary.BigEndian.AppendUint16(f, EtherTypeIPv4)
	f = append(f, ip...)
	return append(f, icmp...)
}

// IPv4Header returns a 20-byte IPv4 header with its checksum.
func IPv4Header(src, dst netip.Addr, proto byte, payloadLen int) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+payloadLen))
	h[6] = 0x40 // don't fragment
	h[8] = 64
	h[9] = proto
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], Checksum(h))
	return h
}

// IsICMPEchoReply reports whether frame is an IPv4 ICMP echo reply with the
// given id and sequence number.
func IsICMPEchoReply(frame []byte, id, seq uint16) bool {
	if len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != EtherTypeIPv4 {
		return false
	}
	ihl := int(frame[14]&0xf) * 4
	if frame[14+9] != 1 || len(frame) < 14+ihl+8 {
		return false
	}
	icmp := frame[14+ihl:]
	return icmp[0] == 0 && binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == seq
}

// Checksum is the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
