package kvm

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// The large register blocks marshal to JSON as base64 rather than as
// arrays of numbers: a snapshot of one vCPU holds about 4,600 of them
// (LAPIC page, XSAVE area, three interrupt-controller states), and decoding
// that many JSON numbers took most of a restore's 0.5 ms of state decoding.

func marshalBytes(b []byte) ([]byte, error) {
	return json.Marshal(base64.StdEncoding.EncodeToString(b))
}

// unmarshalBytes decodes base64 into dst, which must be filled exactly: a
// state file is untrusted, and a short block would silently zero registers.
func unmarshalBytes(data []byte, dst []byte, what string) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if base64.StdEncoding.DecodedLen(len(s)) < len(dst) || base64.StdEncoding.DecodedLen(len(s)) > len(dst)+2 {
		return fmt.Errorf("%s: %d base64 characters, want %d bytes", what, len(s), len(dst))
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if len(b) != len(dst) {
		return fmt.Errorf("%s: %d bytes, want %d", what, len(b), len(dst))
	}
	copy(dst, b)
	return nil
}

// MarshalJSON encodes the register page as base64.
func (l LAPIC) MarshalJSON() ([]byte, error) { return marshalBytes(l.Regs[:]) }

// UnmarshalJSON decodes a base64 register page of exactly 1 KiB.
func (l *LAPIC) UnmarshalJSON(data []byte) error {
	return unmarshalBytes(data, l.Regs[:], "LAPIC")
}

// MarshalJSON encodes the XSAVE area as base64 of its little-endian bytes.
func (x XSave) MarshalJSON() ([]byte, error) {
	b := make([]byte, 4*len(x.Region))
	for i, v := range x.Region {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return marshalBytes(b)
}

// UnmarshalJSON decodes a base64 XSAVE area of exactly 4 KiB.
func (x *XSave) UnmarshalJSON(data []byte) error {
	b := make([]byte, 4*len(x.Region))
	if err := unmarshalBytes(data, b, "XSAVE area"); err != nil {
		return err
	}
	for i := range x.Region {
		x.Region[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return nil
}

// irqChipJSON is IRQChip's JSON form: the chip ID plus its state as base64.
type irqChipJSON struct {
	ChipID uint32
	Chip   string
}

// MarshalJSON encodes the chip state as base64.
func (c IRQChip) MarshalJSON() ([]byte, error) {
	return json.Marshal(irqChipJSON{ChipID: c.ChipID, Chip: base64.StdEncoding.EncodeToString(c.Chip[:])})
}

// UnmarshalJSON decodes a chip state of exactly 512 bytes.
func (c *IRQChip) UnmarshalJSON(data []byte) error {
	var j struct {
		ChipID uint32
		Chip   json.RawMessage
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("IRQ chip: %w", err)
	}
	c.ChipID = j.ChipID
	return unmarshalBytes(j.Chip, c.Chip[:], "IRQ chip state")
}
