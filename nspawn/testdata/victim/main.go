// Command victim runs inside a test container and reports, one line per
// probe, whether a system call the container's seccomp filter or its
// dropped capabilities should refuse was refused: "NAME refused ERRNO" or
// "NAME allowed". The test reads the lines from the container's log.
package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func report(name string, err error) {
	if err != nil {
		fmt.Printf("%s refused %s\n", name, unix.ErrnoName(err.(unix.Errno)))
		return
	}
	fmt.Printf("%s allowed\n", name)
}

func errno(_, _ uintptr, e unix.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

func main() {
	// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): the
	// kernel keyring is not namespaced; the deny-list refuses it.
	report("keyctl", errno(unix.Syscall(unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, uintptr(0xfffffffd), 0)))
	// ptrace(PTRACE_TRACEME): in @debug, refused by the deny-list.
	report("ptrace", errno(unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0, 0, 0, 0)))
	// modify_ldt: @cpu-emulation.
	report("modify_ldt", errno(unix.Syscall(unix.SYS_MODIFY_LDT, 0, 0, 0)))
	// mount needs CAP_SYS_ADMIN, which volt drops.
	report("mount", unix.Mount("tmpfs", "/tmp", "tmpfs", 0, ""))
	// A raw socket needs CAP_NET_RAW, which volt drops.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err == nil {
		unix.Close(fd)
	}
	report("raw-socket", err)
	// An ordinary call stays allowed.
	report("getpid", errno(unix.Syscall(unix.SYS_GETPID, 0, 0, 0)))
}
