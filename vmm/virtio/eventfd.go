package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// EventFD is a Linux eventfd: the object KVM signals for an ioeventfd
// (a guest write to QueueNotify, without an exit to the VMM) and waits on
// for an irqfd (the VMM raising a GSI without an ioctl). It owns its file
// descriptor through an *os.File, so that reads block in Go's poller
// rather than on an OS thread, and the descriptor is never closed under a
// user (gokvm's bug: raw fds outliving their owner).
type EventFD struct {
	f *os.File
}

// NewEventFD creates a non-blocking, close-on-exec eventfd.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd")}, nil
}

// Signal adds one to the counter, waking a waiter (or, for an irqfd,
// injecting the interrupt).
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	if _, err := e.f.Write(b[:]); err != nil {
		return fmt.Errorf("signal eventfd: %w", err)
	}
	return nil
}

// Trigger is Signal, so that an irqfd EventFD is an interrupt trigger.
func (e *EventFD) Trigger() error { return e.Signal() }

// Wait blocks until the counter is non-zero, then returns and clears it.
// It returns an error wrapping os.ErrClosed once Close was called.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, fmt.Errorf("wait on eventfd: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// FD returns the descriptor for registering with KVM (KVM_IOEVENTFD,
// KVM_IRQFD). KVM takes its own reference to the eventfd, so a registration
// does not depend on the number staying open; the number is valid only
// until Close. Unlike os.File.Fd, FD leaves the descriptor non-blocking.
func (e *EventFD) FD() (int, error) {
	rc, err := e.f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// Close closes the eventfd and wakes any Wait with an error.
func (e *EventFD) Close() error {
	if err := e.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
