package vsock

import (
	"errors"
	"fmt"
	"strings"
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
}

// Validate checks the configuration without touching the host.
func (c Config) Validate() error {
	if c.GuestCID < FirstGuestCID || c.GuestCID > MaxGuestCID {
		return fmt.Errorf("vsock guest_cid %d out of range: it must be between %d and %d (0-2 and 2^32-1 are reserved)",
			c.GuestCID, FirstGuestCID, MaxGuestCID)
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
