//go:build !amd64

package voltinit

import (
	"encoding/binary"
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawRead8 is unix.Read where there is no assembly version: the same
// result, at the cost of the scheduler's system-call path.
func rawRead8(fd int, p *uint64) (int, syscall.Errno) {
	var b [8]byte
	n, err := unix.Read(fd, b[:])
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return -1, errno
	}
	*p = binary.NativeEndian.Uint64(b[:])
	return n, 0
}
