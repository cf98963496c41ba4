package voltinit

import "golang.org/x/sys/unix"

// outb writes val to an I/O port. The calling thread must hold permission
// for the port (ioperm), or the CPU raises #GP and the kernel sends SIGSEGV.
//
//go:noescape
func outb(port uint16, val uint8)

// portAccess asks for permission to use one port on the current thread.
func portAccess(port uint16) error { return unix.Ioperm(int(port), 1, 1) }

// inl reads 32 bits from an I/O port; the same permission rule as outb.
//
//go:noescape
func inl(port uint16) uint32
