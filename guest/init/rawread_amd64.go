package voltinit

import "syscall"

// rawRead8 reads 8 bytes from fd into *p with a bare read(2), bypassing
// the Go scheduler's system-call bookkeeping (which would wake sysmon), as
// syscall.RawSyscall does. Only for descriptors that never block: a
// non-blocking timerfd. It returns the byte count, or an errno.
//
//go:noescape
func rawRead8(fd int, p *uint64) (n int, errno syscall.Errno)
