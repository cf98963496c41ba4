package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The packet header, struct virtio_vsock_hdr of virtio 1.2 §5.10.6: 44 bytes,
// packed, little-endian, at the start of every descriptor chain on the rx and
// tx queues, followed by len bytes of payload for OP_RW.
const HeaderSize = 44

// Field offsets within the header.
const (
	offSrcCID   = 0
	offDstCID   = 8
	offSrcPort  = 16
	offDstPort  = 20
	offLen      = 24
	offType     = 28
	offOp       = 30
	offFlags    = 32
	offBufAlloc = 36
	offFwdCnt   = 40
)

// HostCID is the well-known CID of the host (VMADDR_CID_HOST). The guest's
// CID must be at least FirstGuestCID; CIDs 0 and 1 are reserved, and CIDs
// are 32-bit in practice (the spec reserves the upper half of the 64-bit
// field, and Linux treats 0xffffffff as VMADDR_CID_ANY).
const (
	HostCID       uint64 = 2
	FirstGuestCID uint64 = 3
	MaxGuestCID   uint64 = 0xffff_fffe
)

// MaxPayload bounds the payload of one packet in either direction. Linux
// never sends more than VIRTIO_VSOCK_MAX_PKT_BUF_SIZE (64 KiB) in one packet;
// a guest header claiming more is malformed.
const MaxPayload = 64 << 10

// Type is the socket type of a packet. Only streams are offered.
type Type uint16

// TypeStream is VIRTIO_VSOCK_TYPE_STREAM. SEQPACKET (2) is not negotiated.
const TypeStream Type = 1

// Op is a packet's operation.
type Op uint16

// Operations (enum virtio_vsock_op).
const (
	OpInvalid       Op = 0
	OpRequest       Op = 1
	OpResponse      Op = 2
	OpRst           Op = 3
	OpShutdown      Op = 4
	OpRW            Op = 5
	OpCreditUpdate  Op = 6
	OpCreditRequest Op = 7
)

func (o Op) String() string {
	switch o {
	case OpInvalid:
		return "INVALID"
	case OpRequest:
		return "REQUEST"
	case OpResponse:
		return "RESPONSE"
	case OpRst:
		return "RST"
	case OpShutdown:
		return "SHUTDOWN"
	case OpRW:
		return "RW"
	case OpCreditUpdate:
		return "CREDIT_UPDATE"
	case OpCreditRequest:
		return "CREDIT_REQUEST"
	}
	return fmt.Sprintf("op(%d)", uint16(o))
}

// Shutdown flags, valid with OpShutdown: the sender will receive (ShutdownRcv)
// or send (ShutdownSend) no more data. They accumulate over packets.
const (
	ShutdownRcv  uint32 = 1
	ShutdownSend uint32 = 2
	shutdownBoth        = ShutdownRcv | ShutdownSend
)

// Header is a decoded virtio_vsock_hdr.
type Header struct {
	SrcCID   uint64
	DstCID   uint64
	SrcPort  uint32
	DstPort  uint32
	Len      uint32
	Type     Type
	Op       Op
	Flags    uint32
	BufAlloc uint32
	FwdCnt   uint32
}

func (h Header) String() string {
	return fmt.Sprintf("%s %d:%d->%d:%d len=%d type=%d flags=%#x buf_alloc=%d fwd_cnt=%d",
		h.Op, h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Type, h.Flags, h.BufAlloc, h.FwdCnt)
}

// ErrShortHeader is returned for a buffer that cannot hold a header.
var ErrShortHeader = errors.New("vsock: packet shorter than its 44-byte header")

// DecodeHeader reads a header from the first HeaderSize bytes of b.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrShortHeader, len(b))
	}
	le := binary.LittleEndian
	return Header{
		SrcCID:   le.Uint64(b[offSrcCID:]),
		DstCID:   le.Uint64(b[offDstCID:]),
		SrcPort:  le.Uint32(b[offSrcPort:]),
		DstPort:  le.Uint32(b[offDstPort:]),
		Len:      le.Uint32(b[offLen:]),
		Type:     Type(le.Uint16(b[offType:])),
		Op:       Op(le.Uint16(b[offOp:])),
		Flags:    le.Uint32(b[offFlags:]),
		BufAlloc: le.Uint32(b[offBufAlloc:]),
		FwdCnt:   le.Uint32(b[offFwdCnt:]),
	}, nil
}

// Encode writes h into the first HeaderSize bytes of b, which must be that
// long (the callers size it; a shorter b is a programming error).
func (h Header) Encode(b []byte) {
	_ = b[HeaderSize-1]
	le := binary.LittleEndian
	le.PutUint64(b[offSrcCID:], h.SrcCID)
	le.PutUint64(b[offDstCID:], h.DstCID)
	le.PutUint32(b[offSrcPort:], h.SrcPort)
	le.PutUint32(b[offDstPort:], h.DstPort)
	le.PutUint32(b[offLen:], h.Len)
	le.PutUint16(b[offType:], uint16(h.Type))
	le.PutUint16(b[offOp:], uint16(h.Op))
	le.PutUint32(b[offFlags:], h.Flags)
	le.PutUint32(b[offBufAlloc:], h.BufAlloc)
	le.PutUint32(b[offFwdCnt:], h.FwdCnt)
}

// Verdict is what the host does with a packet from the guest before any
// connection sees it.
type Verdict int

const (
	// Accept: route the packet to its connection (or open one).
	Accept Verdict = iota
	// Drop silently: the packet is not addressed to us (wrong CIDs), or is
	// an RST, which is never answered.
	Drop
	// Reset: answer with an RST (an unsupported type, a bad length).
	Reset
)

// CheckTx classifies a header the guest put on the tx queue, given the
// guest's CID and the payload bytes the descriptor chain actually holds
// after the header. Everything in the header is untrusted.
func CheckTx(h Header, guestCID uint64, avail int) (Verdict, string) {
	switch {
	case h.SrcCID != guestCID:
		return Drop, fmt.Sprintf("source CID %d is not the guest's %d", h.SrcCID, guestCID)
	case h.DstCID != HostCID:
		return Drop, fmt.Sprintf("destination CID %d is not the host", h.DstCID)
	case h.Op == OpRst:
		// Checked before the type so that an RST is never answered with
		// one, whatever else is wrong with it (no RST ping-pong).
		return Accept, ""
	case h.Type != TypeStream:
		return Reset, fmt.Sprintf("socket type %d is not stream", h.Type)
	case h.Len > MaxPayload:
		return Reset, fmt.Sprintf("payload length %d exceeds %d", h.Len, MaxPayload)
	case int64(h.Len) > int64(avail):
		return Reset, fmt.Sprintf("payload length %d exceeds the %d bytes in the descriptor chain", h.Len, avail)
	case h.Op != OpRW && h.Len != 0:
		return Reset, fmt.Sprintf("%s packet carries %d payload bytes", h.Op, h.Len)
	case h.Op < OpRequest || h.Op > OpCreditRequest:
		return Reset, fmt.Sprintf("unknown operation %d", uint16(h.Op))
	}
	return Accept, ""
}
