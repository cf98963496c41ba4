//go:build !amd64

package voltinit

import "errors"

// Other architectures have no I/O ports; markers there need an MMIO address
// the VMM does not define yet.
func outb(port uint16, val uint8) {}

func portAccess(port uint16) error { return errors.New("no I/O ports on this architecture") }

func inl(port uint16) uint32 { return 0xffffffff }
