package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types.
const (
	FrameRequest uint8 = 0x01 // caller → agent: the request, first and only frame
	FrameStdout  uint8 = 0x10 // agent → caller: bytes the command wrote to standard output
	FrameStderr  uint8 = 0x11 // agent → caller: bytes the command wrote to standard error
	FrameExit    uint8 = 0x12 // agent → caller: the status, last frame
)

const (
	// HeaderSize is the size of every frame's header: u32 payload length
	// (little-endian), u8 type, three zero bytes.
	HeaderSize = 8
	// MaxPayload bounds a frame's payload. 64 KiB is a vsock stream's
	// default credit window in Linux (buf_alloc 256 KiB is larger): a frame
	// always fits in one window, and a parser needs no larger buffer.
	MaxPayload = 64 << 10
)

// ErrProtocol is wrapped by every error about bytes that break the
// protocol, so callers can tell a misbehaving peer from a broken stream.
var ErrProtocol = errors.New("agent protocol")

func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// Header is a decoded frame header.
type Header struct {
	Type   uint8
	Length uint32
}

// ParseHeader decodes and checks a frame header: a known type, zero
// reserved bytes and a length within MaxPayload.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, protocolError("frame header of %d bytes, want %d", len(b), HeaderSize)
	}
	h := Header{Length: binary.LittleEndian.Uint32(b[0:4]), Type: b[4]}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return Header{}, protocolError("frame header reserved bytes % x are not zero", b[5:8])
	}
	switch h.Type {
	case FrameRequest, FrameStdout, FrameStderr, FrameExit:
	default:
		return Header{}, protocolError("unknown frame type %#02x", h.Type)
	}
	if h.Length > MaxPayload {
		return Header{}, protocolError("frame of %d bytes exceeds the limit of %d", h.Length, MaxPayload)
	}
	return h, nil
}

func putHeader(b []byte, typ uint8, n int) {
	binary.LittleEndian.PutUint32(b[0:4], uint32(n))
	b[4], b[5], b[6], b[7] = typ, 0, 0, 0
}

// writeFrame writes one frame with a single Write, so that frames from one
// writer never interleave on a stream shared under a lock.
func writeFrame(w io.Writer, typ uint8, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("frame of %d bytes exceeds the limit of %d", len(payload), MaxPayload)
	}
	buf := make([]byte, HeaderSize+len(payload))
	putHeader(buf, typ, len(payload))
	copy(buf[HeaderSize:], payload)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one frame into buf (which must hold MaxPayload bytes) and
// returns its header and payload (a slice of buf). A stream that ends
// before a header is io.EOF; one that ends inside a frame is
// io.ErrUnexpectedEOF.
func readFrame(r io.Reader, hdr, buf []byte) (Header, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:HeaderSize]); err != nil {
		return Header{}, nil, err
	}
	h, err := ParseHeader(hdr)
	if err != nil {
		return Header{}, nil, err
	}
	p := buf[:h.Length]
	if _, err := io.ReadFull(r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, fmt.Errorf("frame %#02x of %d bytes: %w", h.Type, h.Length, err)
	}
	return h, p, nil
}
