package snapshot

import (
	"crypto/sha256"
	"encoding/binary"
)

// wrap puts a valid header and checksum around payload (minor version 0:
// JSON only).
func wrap(payload []byte) []byte { return wrapAs(0, payload, nil) }

// wrapAs makes a file of minor version minor from the JSON doc and the
// binary section, with a valid header and checksum.
func wrapAs(minor uint16, doc, section []byte) []byte {
	payload := append(append([]byte(nil), doc...), section...)
	out := make([]byte, headerSize, headerSize+len(payload))
	copy(out, Magic)
	binary.LittleEndian.PutUint16(out[8:], MajorVersion)
	binary.LittleEndian.PutUint16(out[10:], minor)
	binary.LittleEndian.PutUint32(out[12:], uint32(len(section)))
	binary.LittleEndian.PutUint64(out[16:], uint64(len(payload)))
	sum := sha256.Sum256(payload)
	copy(out[24:], sum[:])
	return append(out, payload...)
}
