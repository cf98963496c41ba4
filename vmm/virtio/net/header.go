package net

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderSize is the virtio-net header in front of every frame, in the
// VIRTIO_F_VERSION_1 layout (virtio 1.2 §5.1.6: struct virtio_net_hdr with
// num_buffers, always present for modern devices).
const HeaderSize = 12

// Header flags (virtio 1.2 §5.1.6).
const (
	// HdrFNeedsCsum: the checksum from CsumStart, stored at
	// CsumStart+CsumOffset, is still to be computed.
	HdrFNeedsCsum = 1
	// HdrFDataValid: the device already validated the checksum (receive
	// only).
	HdrFDataValid = 2
)

// GSO types (virtio 1.2 §5.1.6).
const (
	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3
	GSOTCPv6 = 4
	GSOUDPL4 = 5
	// GSOECN is or'ed into the type: the TCP segments carry ECN (CWR).
	GSOECN = 0x80
)

// Frame sizes.
const (
	EthHeaderLen = 14
	// MaxFrameLen bounds one Ethernet frame in either direction: a 64 KiB
	// TSO super-frame plus its Ethernet header. Longer is malformed.
	MaxFrameLen = 65536 + EthHeaderLen
	// MaxPacketLen is a frame with its virtio-net header.
	MaxPacketLen = HeaderSize + MaxFrameLen
)

// Header is the decoded virtio-net header (little-endian on the wire).
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16
}

// DecodeHeader reads a header from the first HeaderSize bytes of b.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("virtio-net header needs %d bytes, have %d", HeaderSize, len(b))
	}
	return Header{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
		NumBuffers: binary.LittleEndian.Uint16(b[10:]),
	}, nil
}

// Encode writes h into the first HeaderSize bytes of b.
func (h Header) Encode(b []byte) {
	_ = b[HeaderSize-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
	binary.LittleEndian.PutUint16(b[10:], h.NumBuffers)
}

// Reasons a guest frame is refused before it reaches the TAP. They are
// sentinels so that the device can count each one.
var (
	ErrFrameTooShort    = errors.New("frame shorter than an Ethernet header")
	ErrFrameTooLong     = errors.New("frame longer than a 64 KiB TSO frame")
	ErrCsumNotAgreed    = errors.New("checksum offload requested without VIRTIO_NET_F_CSUM")
	ErrCsumOutOfFrame   = errors.New("checksum position outside the frame")
	ErrGSONotAgreed     = errors.New("segmentation offload type not negotiated")
	ErrGSOBadSize       = errors.New("segmentation offload with a zero segment size")
	ErrGSOHdrOutOfFrame = errors.New("segmentation header length beyond the frame")
)

// CheckTxHeader validates the header of a frame of frameLen bytes (after
// the header) that the guest asks us to send, against the features it
// negotiated, and returns the header to hand to the TAP: flag bits we do
// not know and num_buffers (meaningless on transmit) cleared. The kernel
// checks again, but a refusal here costs no system call and says why.
func CheckTxHeader(h Header, frameLen int, acked uint64) (Header, error) {
	if frameLen < EthHeaderLen {
		return Header{}, ErrFrameTooShort
	}
	if frameLen > MaxFrameLen {
		return Header{}, ErrFrameTooLong
	}
	out := Header{Flags: h.Flags & HdrFNeedsCsum, GSOType: h.GSOType}
	if out.Flags&HdrFNeedsCsum != 0 {
		if acked&FeatureCsum == 0 {
			return Header{}, ErrCsumNotAgreed
		}
		if int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
			return Header{}, ErrCsumOutOfFrame
		}
		out.CsumStart, out.CsumOffset = h.CsumStart, h.CsumOffset
	}
	if h.GSOType == GSONone {
		return out, nil
	}
	var need uint64
	switch h.GSOType &^ GSOECN {
	case GSOTCPv4:
		need = FeatureHostTSO4
	case GSOTCPv6:
		need = FeatureHostTSO6
	default:
		// UDP fragmentation and UDP segmentation are never offered.
		return Header{}, ErrGSONotAgreed
	}
	if h.GSOType&GSOECN != 0 {
		need |= FeatureHostECN
	}
	if acked&need != need {
		return Header{}, ErrGSONotAgreed
	}
	if h.GSOSize == 0 {
		return Header{}, ErrGSOBadSize
	}
	if int(h.HdrLen) > frameLen {
		return Header{}, ErrGSOHdrOutOfFrame
	}
	out.HdrLen, out.GSOSize = h.HdrLen, h.GSOSize
	return out, nil
}

// FixRxHeader adapts the header the TAP put in front of a received frame to
// what the guest negotiated: without GUEST_CSUM the flags must be zero
// (virtio 1.2 §5.1.6.4.1), and a segmentation type the guest did not accept
// means the frame cannot be delivered (it is dropped, never truncated).
func FixRxHeader(h Header, acked uint64) (Header, error) {
	if acked&FeatureGuestCsum == 0 {
		if h.Flags&HdrFNeedsCsum != 0 {
			return Header{}, ErrCsumNotAgreed
		}
		h.Flags = 0
	}
	if h.GSOType != GSONone {
		var need uint64
		switch h.GSOType &^ GSOECN {
		case GSOTCPv4:
			need = FeatureGuestTSO4
		case GSOTCPv6:
			need = FeatureGuestTSO6
		default:
			return Header{}, ErrGSONotAgreed
		}
		if h.GSOType&GSOECN != 0 {
			need |= FeatureGuestECN
		}
		if acked&need != need {
			return Header{}, ErrGSONotAgreed
		}
	}
	h.NumBuffers = 0
	return h, nil
}
