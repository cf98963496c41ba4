package net

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/voltvmm/volt/vmm/netdev"
)

// Backend is the host side of the device: a descriptor that carries one
// Ethernet frame per read or write, each prefixed by a HeaderSize-byte
// virtio-net header. *netdev.Tap (TAP and macvtap) is the real one.
type Backend interface {
	// Name is the host interface, for logs and snapshot state.
	Name() string
	// SupportedOffloads is what SetOffload may enable.
	SupportedOffloads() netdev.Offload
	// SetOffload sets the receive offloads the host may leave to the guest.
	SetOffload(netdev.Offload) error
	// Read reads one frame without blocking; unix.EAGAIN when none waits.
	Read(p []byte) (int, error)
	// Writev writes one frame gathered from iov.
	Writev(iov [][]byte) (int, error)
	// SyscallConn waits for readability in Go's poller.
	SyscallConn() (syscall.RawConn, error)
	// SetReadDeadline wakes a SyscallConn wait (a past time: now).
	SetReadDeadline(time.Time) error
	Close() error
}

var _ Backend = (*netdev.Tap)(nil)

// BackendKind selects how the host side is opened.
type BackendKind string

const (
	// BackendTap opens (or creates) the TAP interface Name.
	BackendTap BackendKind = "tap"
	// BackendMacvtap opens a queue of the macvtap interface Name.
	BackendMacvtap BackendKind = "macvtap"
	// BackendBridge creates a TAP (named by the pattern Name, default
	// netdev.BridgedTapPattern) and attaches it to the existing Bridge.
	BackendBridge BackendKind = "bridge"
)

// BackendConfig describes the host side. It is plain data and part of the
// device's snapshot state: a restore opens the same backend again (the
// pool gives each clone a network namespace holding a TAP of the same
// name).
type BackendConfig struct {
	Kind   BackendKind `json:"kind"`
	Name   string      `json:"name,omitempty"`
	Bridge string      `json:"bridge,omitempty"`
}

// Validate checks the description without touching the host.
func (c BackendConfig) Validate() error {
	switch c.Kind {
	case BackendTap, BackendMacvtap:
		if c.Name == "" {
			return fmt.Errorf("%s backend needs an interface name", c.Kind)
		}
		if err := netdev.ValidateName(c.Name); err != nil {
			return fmt.Errorf("%s backend: %w", c.Kind, err)
		}
		if c.Bridge != "" {
			return fmt.Errorf("%s backend %s: a bridge is only used with the bridge backend", c.Kind, c.Name)
		}
	case BackendBridge:
		if c.Bridge == "" {
			return errors.New("bridge backend needs a bridge name")
		}
		if err := netdev.ValidateName(c.Bridge); err != nil {
			return fmt.Errorf("bridge backend: %w", err)
		}
		if c.Name != "" {
			if err := netdev.ValidateName(c.Name); err != nil {
				return fmt.Errorf("bridge backend TAP pattern: %w", err)
			}
		}
	case "":
		return errors.New("network backend kind missing (tap, macvtap or bridge)")
	default:
		return fmt.Errorf("unknown network backend %q (want tap, macvtap or bridge)", c.Kind)
	}
	return nil
}

// Opened is an open backend and what it tells about itself.
type Opened struct {
	Backend Backend
	// HostName is the interface actually used (a bridged TAP's name is the
	// kernel's choice).
	HostName string
	// MAC is the address the guest should use when none was configured:
	// a macvtap's own address (its lower device delivers only frames sent
	// to it), zero for a TAP.
	MAC MAC
}

// OpenBackend opens the host side described by c in the calling thread's
// network namespace.
func OpenBackend(c BackendConfig) (Opened, error) {
	if err := c.Validate(); err != nil {
		return Opened{}, err
	}
	switch c.Kind {
	case BackendTap:
		t, err := netdev.OpenTap(c.Name)
		if err != nil {
			return Opened{}, err
		}
		return Opened{Backend: t, HostName: t.Name()}, nil
	case BackendMacvtap:
		m, err := netdev.OpenMacvtap(c.Name)
		if err != nil {
			return Opened{}, err
		}
		var mac MAC
		copy(mac[:], m.HardwareAddr)
		return Opened{Backend: m.Tap, HostName: m.Name(), MAC: mac}, nil
	default:
		t, err := netdev.OpenBridgedTap(c.Bridge, c.Name)
		if err != nil {
			return Opened{}, err
		}
		return Opened{Backend: t, HostName: t.Name()}, nil
	}
}
