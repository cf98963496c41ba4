package snapshot

import (
	"crypto/sha256"
	"encoding/binary"
)

// wrap puts a valid header and checksum around payload.
func wrap(payload []byte) []byte {
	out := make([]byte, headerSize, headerSize+len(payload))
	copy(out, Magic)
	binary.LittleEndian.PutUint16(out[8:], MajorVersion)
	binary.LittleEndian.PutUint64(out[16:], uint64(len(payload)))
	sum := sha256.Sum256(payload)
	copy(out[24:], sum[:])
	return append(out, payload...)
}
