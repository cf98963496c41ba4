// Package genid is Volt's VM generation ID device: 16 bytes, readable by the
// guest at I/O ports 0xf00–0xf0f, that change every time a VM is restored
// from a snapshot. A guest that sees the value change knows it may be one of
// many clones of the same memory image and must refresh everything that has
// to be unique: RNG state, TCP sequence secrets, UUIDs, cached credentials.
// Ports (not ACPI's vmgenid) keep it usable by guests without ACPI, such as
// the probe guest and Volt's minimal Linux.
package genid

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
)

// Placement of the device.
const (
	Port = 0x0f00
	Size = 16
)

// ID is one generation identifier.
type ID [Size]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// NewID returns a random ID from the host's CSPRNG.
func NewID() (ID, error) {
	var id ID
	if _, err := rand.Read(id[:]); err != nil {
		return id, fmt.Errorf("generation ID: %w", err)
	}
	return id, nil
}

// State is the device's snapshot form.
type State struct {
	ID ID
}

// Device serves the current ID.
type Device struct {
	mu sync.Mutex
	id ID
}

// New returns a device serving id.
func New(id ID) *Device { return &Device{id: id} }

// Read returns ID bytes from offset on; reads past the end return zeros.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		if o := offset + uint64(i); o < Size {
			data[i] = d.id[o]
		} else {
			data[i] = 0
		}
	}
}

// Write is ignored: the guest cannot change its generation.
func (d *Device) Write(offset uint64, data []byte) {}

// ID returns the current ID.
func (d *Device) ID() ID {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.id
}

// Set installs a new ID (on restore).
func (d *Device) Set(id ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id = id
}

// State returns the current ID as snapshot state.
func (d *Device) State() State { return State{ID: d.ID()} }
