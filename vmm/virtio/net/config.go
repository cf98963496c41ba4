package net

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// MAC is an Ethernet address.
type MAC [6]byte

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// IsZero reports whether m is unset.
func (m MAC) IsZero() bool { return m == MAC{} }

// ParseMAC reads "aa:bb:cc:dd:ee:ff" (or with '-'). Multicast addresses are
// refused: a guest NIC with one would never receive unicast frames.
func ParseMAC(s string) (MAC, error) {
	var m MAC
	sep := ":"
	if strings.Contains(s, "-") {
		sep = "-"
	}
	parts := strings.Split(s, sep)
	if len(parts) != 6 {
		return m, fmt.Errorf("MAC %q: want six hex bytes separated by ':'", s)
	}
	for i, p := range parts {
		if len(p) != 2 {
			return m, fmt.Errorf("MAC %q: byte %q is not two hex digits", s, p)
		}
		v, err := strconv.ParseUint(p, 16, 8)
		if err != nil {
			return m, fmt.Errorf("MAC %q: byte %q is not hex", s, p)
		}
		m[i] = byte(v)
	}
	if m[0]&1 != 0 {
		return m, fmt.Errorf("MAC %s is a multicast address", m)
	}
	if m.IsZero() {
		return m, fmt.Errorf("MAC %s is all zeros", m)
	}
	return m, nil
}

// RandomMAC returns a locally administered unicast address.
func RandomMAC() (MAC, error) {
	var m MAC
	if _, err := rand.Read(m[:]); err != nil {
		return m, fmt.Errorf("random MAC: %w", err)
	}
	m[0] = m[0]&^1 | 2
	return m, nil
}

// Config-space layout (virtio 1.2 §5.1.4, struct virtio_net_config). Fields
// past mtu (speed, duplex, RSS) belong to features we do not offer.
const (
	configMACOffset             = 0
	configStatusOffset          = 6
	configMaxPairsOffset        = 8
	configMTUOffset             = 10
	ConfigSize                  = 12
	statusLinkUp         uint16 = 1 // VIRTIO_NET_S_LINK_UP
)

// MTU bounds: the IPv4 minimum and what a 16-bit config field and a 64 KiB
// frame allow.
const (
	MinMTU = 68
	MaxMTU = 65535 - EthHeaderLen
)

// configSpace is the device's config space, read by the driver.
type configSpace struct {
	mac    MAC
	status uint16
	mtu    uint16
}

func (c configSpace) bytes() [ConfigSize]byte {
	var b [ConfigSize]byte
	copy(b[configMACOffset:], c.mac[:])
	binary.LittleEndian.PutUint16(b[configStatusOffset:], c.status)
	binary.LittleEndian.PutUint16(b[configMaxPairsOffset:], 1)
	binary.LittleEndian.PutUint16(b[configMTUOffset:], c.mtu)
	return b
}

// read copies config bytes from offset into data; bytes past the end read
// as zero, as for any device-specific field we do not implement.
func (c configSpace) read(offset uint64, data []byte) {
	b := c.bytes()
	for i := range data {
		o := offset + uint64(i)
		if o < ConfigSize {
			data[i] = b[o]
		} else {
			data[i] = 0
		}
	}
}
