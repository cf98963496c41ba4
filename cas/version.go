package cas

import (
	"errors"
	"fmt"
	"strconv"
)

// StoreVersion is the store layout this code reads and writes. A change to
// the layout or to a file format that older code would misread bumps it.
const StoreVersion = 1

// versionPrefix starts the VERSION file; the whole file is
// "volt-cas-store <decimal version>\n".
const versionPrefix = "volt-cas-store "

// ErrNewerStore is returned by Open for a store written by a newer volt.
var ErrNewerStore = errors.New("store written by a newer volt")

// ErrBadVersion is wrapped by every VERSION-file parse error.
var ErrBadVersion = errors.New("malformed store VERSION file")

// EncodeVersion returns the content of a VERSION file for version v.
func EncodeVersion(v int) []byte { return []byte(versionPrefix + strconv.Itoa(v) + "\n") }

// ParseVersion decodes a VERSION file. It accepts any version number, so that
// the caller can tell a newer store (refuse with ErrNewerStore) from a
// malformed file.
func ParseVersion(b []byte) (int, error) {
	const maxLen = len(versionPrefix) + 10
	if len(b) > maxLen {
		return 0, fmt.Errorf("%w: %d bytes, longer than any valid one", ErrBadVersion, len(b))
	}
	s := string(b)
	if len(s) < len(versionPrefix)+2 || s[:len(versionPrefix)] != versionPrefix || s[len(s)-1] != '\n' {
		return 0, fmt.Errorf("%w: want %q followed by a number and a newline", ErrBadVersion, versionPrefix)
	}
	num := s[len(versionPrefix) : len(s)-1]
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, fmt.Errorf("%w: version %q is not a decimal number", ErrBadVersion, num)
		}
	}
	if num[0] == '0' {
		return 0, fmt.Errorf("%w: version %q: zero or a leading zero", ErrBadVersion, num)
	}
	v, err := strconv.Atoi(num)
	if err != nil {
		return 0, fmt.Errorf("%w: version %q: %v", ErrBadVersion, num, err)
	}
	return v, nil
}

// checkVersion refuses versions this code cannot read.
func checkVersion(v int) error {
	if v > StoreVersion {
		return fmt.Errorf("%w: the store is format %d, this volt reads format %d; upgrade volt to use it", ErrNewerStore, v, StoreVersion)
	}
	if v < StoreVersion {
		// There is no older format yet; a smaller number is a damaged file.
		return fmt.Errorf("%w: format %d is not one volt ever wrote", ErrBadVersion, v)
	}
	return nil
}
