// Command vsockcall is a test tool for Linux guests (busybox has no vsock
// client): it connects to a vsock port, sends one line and prints the line
// that comes back.
//
//	vsockcall CID PORT MESSAGE
//
// vmm/linux_virtio_test.go builds it static and puts it into the guest's
// root file system; the host end is a listener on the VMM's <uds_path>_PORT.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "vsockcall: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: vsockcall CID PORT MESSAGE")
	}
	cid, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return fmt.Errorf("CID %q: %w", args[0], err)
	}
	port, err := strconv.ParseUint(args[1], 10, 32)
	if err != nil {
		return fmt.Errorf("port %q: %w", args[1], err)
	}
	// Non-blocking, so that Go's poller waits for the connection: a
	// blocking connect fails with EINTR at the runtime's first preemption
	// signal, and vsock then abandons the connection.
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "vsock")
	defer f.Close()
	f.SetDeadline(time.Now().Add(20 * time.Second))
	if err := connect(f, fd, &unix.SockaddrVM{CID: uint32(cid), Port: uint32(port)}); err != nil {
		return fmt.Errorf("connect to %d:%d: %w", cid, port, err)
	}
	if _, err := fmt.Fprintf(f, "%s\n", args[2]); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return fmt.Errorf("receive: %w (got %q)", err, line)
	}
	fmt.Print(line)
	return nil
}

// connect starts a non-blocking connect and waits until it is done.
func connect(f *os.File, fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINPROGRESS {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var soErr int
	werr := rc.Write(func(fd uintptr) bool {
		// Writable once the connection is done, either way; until then
		// the poller waits for the edge.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, perr := unix.Poll(pfd, 0); perr != nil || n == 0 {
			return false
		}
		soErr, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		return true
	})
	switch {
	case werr != nil:
		return werr
	case err != nil:
		return err
	case soErr != 0:
		return unix.Errno(soErr)
	}
	return nil
}
