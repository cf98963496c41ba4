package vsock

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// maxSunPath is the longest path a sockaddr_un holds: sun_path is 108 bytes
// and Linux wants the path NUL-terminated within it.
const maxSunPath = 107

// portSuffixMax is the longest "_<port>" suffix of a guest-initiated
// connection's path ("_4294967295").
const portSuffixMax = 11

// Config is the vsock device as PUT /vsock or --vsock cid=,uds= describe it.
type Config struct {
	// GuestCID is the guest's context ID (guest_cid), 3 ≤ CID < 2^32-1.
	GuestCID uint64
	// UDSPath is the host Unix socket (uds_path) that host clients connect
	// to; guest-initiated connections to port N go to UDSPath + "_N".
	UDSPath string
	// RequestTimeout is how long a host-initiated connection waits for the
	// guest's RESPONSE before the host client is closed (it then reads
	// EOF); zero means RequestTimeout (Firecracker's 2 s). A busy guest may
	// need longer: a Linux guest whose kernel runs under instruction
	// emulation answers in seconds, not microseconds. It is the host's
	// policy, not the guest's state: a snapshot does not carry it, and a
	// restored device takes it through WithRequestTimeout.
	RequestTimeout time.Duration
}

// MaxRequestTimeout bounds a configured request timeout: longer, a host
// client of a guest that will never answer would hang for good.
const MaxRequestTimeout = time.Hour

// ValidateRequestTimeout checks a configured request timeout.
func ValidateRequestTimeout(d time.Duration) error {
	if d <= 0 || d > MaxRequestTimeout {
		return fmt.Errorf("vsock request timeout %v: it must be more than 0 and at most %v", d, MaxRequestTimeout)
	}
	return nil
}

// Validate checks the configuration without touching the host.
func (c Config) Validate() error {
	if c.GuestCID < FirstGuestCID || c.GuestCID > MaxGuestCID {
		return fmt.Errorf("vsock guest_cid %d out of range: it must be between %d and %d (0-2 and 2^32-1 are reserved)",
			c.GuestCID, FirstGuestCID, MaxGuestCID)
	}
	if c.RequestTimeout != 0 {
		if err := ValidateRequestTimeout(c.RequestTimeout); err != nil {
			return err
		}
	}
	return ValidateUDSPath(c.UDSPath)
}

// ValidateUDSPath checks a uds_path (also a vsock_override on restore).
func ValidateUDSPath(path string) error {
	switch {
	case path == "":
		return errors.New("vsock uds_path is empty")
	case strings.IndexByte(path, 0) >= 0:
		return errors.New("vsock uds_path contains a NUL byte")
	case path[0] == '@':
		return fmt.Errorf("vsock uds_path %q: abstract sockets are not supported, give a file system path", path)
	case strings.HasSuffix(path, "/"):
		return fmt.Errorf("vsock uds_path %q names a directory, not a socket", path)
	case len(path) > maxSunPath:
		return fmt.Errorf("vsock uds_path is %d bytes; a Unix socket path holds at most %d (sun_path is 108 bytes with its NUL): use a shorter or relative path",
			len(path), maxSunPath)
	}
	return nil
}

// GuestPortPathsFit tells whether every "<uds_path>_<port>" a guest may
// connect to fits in sun_path; when it does not, connections to high port
// numbers are refused with an RST (the VMM may warn at start-up).
func (c Config) GuestPortPathsFit() bool { return len(c.UDSPath)+portSuffixMax <= maxSunPath }
