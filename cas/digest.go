package cas

import (
	"bytes"
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

// DigestSize is the length in bytes of a BLAKE3-256 digest.
const DigestSize = 32

// Digest names a chunk or a manifest: the BLAKE3-256 hash of its bytes.
// The zero Digest never names stored content; in a manifest it marks a hole
// (an all-zero chunk, which is never stored).
type Digest [DigestSize]byte

// Sum returns the digest of b.
func Sum(b []byte) Digest { return Digest(blake3.Sum256(b)) }

// IsZero reports whether d is the zero digest (a hole in a manifest).
func (d Digest) IsZero() bool { return d == Digest{} }

// String returns d as 64 lowercase hex digits, the form used in file names,
// ref files and command output.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Short returns the first 12 hex digits, for messages meant for people.
func (d Digest) Short() string { return d.String()[:12] }

// MarshalText encodes d as String does, so that JSON output shows hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses the String form.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// ParseDigest parses exactly 64 lowercase hex digits. Uppercase is refused so
// that every digest has one spelling, the one its file is named by.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*DigestSize {
		return d, fmt.Errorf("digest %q: want %d hex digits, have %d", truncateForError(s), 2*DigestSize, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return d, fmt.Errorf("digest %q: byte %d is not a lowercase hex digit", truncateForError(s), i)
		}
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("digest %q: %w", truncateForError(s), err)
	}
	return d, nil
}

// isZeroes reports whether b holds only zero bytes. It compares against a
// shared zero page so that the comparison runs at memequal speed.
func isZeroes(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroPage [64 << 10]byte

// truncateForError keeps error messages about untrusted strings short.
func truncateForError(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
