package vsock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Host sockets are raw non-blocking file descriptors owned by the muxer and
// polled by its epoll set; none of these calls blocks.

// sockRead reads into p, retrying on EINTR. n == 0 with a nil error is EOF.
func sockRead(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err == unix.EINTR {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// sockWrite writes p with MSG_NOSIGNAL, so that a vanished reader yields
// EPIPE and never SIGPIPE, retrying on EINTR.
func sockWrite(fd int, p []byte) (int, error) {
	for {
		n, err := unix.SendmsgN(fd, p, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// wouldBlock tells a full or empty socket from a real failure.
func wouldBlock(err error) bool { return err == unix.EAGAIN || err == unix.EWOULDBLOCK }

// connectUnix connects a new non-blocking stream socket to path. A Unix
// connect completes or fails at once; a full listen backlog (EAGAIN) counts
// as refused, since waiting would stall the device.
func connectUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", path, err)
	}
	return fd, nil
}

// listenBacklog lets many pool callers connect at once while the worker is
// busy; Unix connects beyond it fail with EAGAIN.
const listenBacklog = 1024

// listenUnix binds and listens on path. A socket file left by a VMM that
// died (nobody accepts on it) is replaced; a live socket or any other file
// at path is an error, so that a typo never deletes a user's file and two
// VMMs never share a path.
func listenUnix(path string) (int, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return -1, fmt.Errorf("vsock uds_path %s exists and is not a socket", path)
		}
		probe, cerr := connectUnix(path)
		if cerr == nil {
			unix.Close(probe)
			return -1, fmt.Errorf("vsock uds_path %s is in use by a live listener", path)
		}
		if !errors.Is(cerr, unix.ECONNREFUSED) {
			return -1, fmt.Errorf("vsock uds_path %s: %w", path, cerr)
		}
		if err := os.Remove(path); err != nil {
			return -1, fmt.Errorf("remove stale vsock socket: %w", err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind vsock uds_path %s: %w", path, err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return -1, fmt.Errorf("listen on %s: %w", path, err)
	}
	return fd, nil
}
