package cas

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Lease file format, version 1: text lines, in this order, each ending in a
// newline:
//
//	volt-cas-lease 1
//	pid 1234              (the holder's pid when it took the lease; informational)
//	expires 0             (Unix time in seconds after which the lease protects nothing; 0 = never)
//	manifest <64 hex>     (one line per protected manifest, at least one, no repeats)
//
// Whether a lease is alive is not in the file: it is the flock its holder
// keeps on it (see lease.go).

const (
	leaseHeader = "volt-cas-lease 1"
	// MaxLeaseManifests bounds the manifests one lease may name.
	MaxLeaseManifests = 4096
	maxLeaseFileSize  = 128 + MaxLeaseManifests*(len("manifest ")+2*DigestSize+1)
)

// ErrBadLease is wrapped by every lease-file parse error.
var ErrBadLease = errors.New("malformed lease file")

// LeaseRecord is the content of a lease file.
type LeaseRecord struct {
	PID       int
	Expires   time.Time // zero: never expires
	Manifests []Digest
}

// EncodeLease returns the lease file content for r.
func EncodeLease(r LeaseRecord) ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\npid %d\nexpires %d\n", leaseHeader, r.PID, expiresUnix(r.Expires))
	for _, d := range r.Manifests {
		fmt.Fprintf(&b, "manifest %s\n", d)
	}
	return b.Bytes(), nil
}

func expiresUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (r LeaseRecord) validate() error {
	if r.PID < 0 {
		return fmt.Errorf("%w: negative pid %d", ErrBadLease, r.PID)
	}
	if !r.Expires.IsZero() && r.Expires.Unix() <= 0 {
		return fmt.Errorf("%w: expiry %v is before 1970", ErrBadLease, r.Expires)
	}
	if len(r.Manifests) == 0 {
		return fmt.Errorf("%w: names no manifest", ErrBadLease)
	}
	if len(r.Manifests) > MaxLeaseManifests {
		return fmt.Errorf("%w: names %d manifests, the limit is %d", ErrBadLease, len(r.Manifests), MaxLeaseManifests)
	}
	seen := make(map[Digest]bool, len(r.Manifests))
	for _, d := range r.Manifests {
		if d.IsZero() {
			return fmt.Errorf("%w: the zero digest names no manifest", ErrBadLease)
		}
		if seen[d] {
			return fmt.Errorf("%w: manifest %s named twice", ErrBadLease, d.Short())
		}
		seen[d] = true
	}
	return nil
}

// ParseLease decodes a lease file, accepting only what EncodeLease writes.
func ParseLease(b []byte) (LeaseRecord, error) {
	var r LeaseRecord
	if len(b) > maxLeaseFileSize {
		return r, fmt.Errorf("%w: %d bytes, more than the limit of %d", ErrBadLease, len(b), maxLeaseFileSize)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return r, fmt.Errorf("%w: empty or not ending in a newline", ErrBadLease)
	}
	lines := strings.Split(string(b[:len(b)-1]), "\n")
	if len(lines) < 4 {
		return r, fmt.Errorf("%w: %d lines, want a header, pid, expires and at least one manifest", ErrBadLease, len(lines))
	}
	if lines[0] != leaseHeader {
		return r, fmt.Errorf("%w: first line %q, want %q", ErrBadLease, truncateForError(lines[0]), leaseHeader)
	}
	pid, err := parseField(lines[1], "pid")
	if err != nil {
		return r, err
	}
	exp, err := parseField(lines[2], "expires")
	if err != nil {
		return r, err
	}
	r.PID = int(pid)
	if exp != 0 {
		r.Expires = time.Unix(exp, 0)
	}
	for i, line := range lines[3:] {
		hexd, ok := strings.CutPrefix(line, "manifest ")
		if !ok {
			return r, fmt.Errorf("%w: line %d: want \"manifest <digest>\"", ErrBadLease, i+4)
		}
		d, err := ParseDigest(hexd)
		if err != nil {
			return r, fmt.Errorf("%w: line %d: %v", ErrBadLease, i+4, err)
		}
		r.Manifests = append(r.Manifests, d)
	}
	if err := r.validate(); err != nil {
		return LeaseRecord{}, err
	}
	return r, nil
}

// parseField parses "key N" with N a canonical non-negative decimal (no sign,
// no leading zeros) that fits in 63 bits.
func parseField(line, key string) (int64, error) {
	num, ok := strings.CutPrefix(line, key+" ")
	if !ok {
		return 0, fmt.Errorf("%w: want %q line, have %q", ErrBadLease, key, truncateForError(line))
	}
	if num == "" || len(num) > 19 || (num[0] == '0' && len(num) > 1) {
		return 0, fmt.Errorf("%w: %s %q is not a canonical number", ErrBadLease, key, truncateForError(num))
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, fmt.Errorf("%w: %s %q is not a number", ErrBadLease, key, truncateForError(num))
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %q: %v", ErrBadLease, key, truncateForError(num), err)
	}
	return v, nil
}
