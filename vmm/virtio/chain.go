package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/voltvmm/volt/vmm/memory"
)

// ErrInvalidChain is wrapped by every error about a malformed descriptor
// chain or ring: the driver broke the protocol, the device stops using the
// queue and the transport marks it DEVICE_NEEDS_RESET.
var ErrInvalidChain = errors.New("invalid virtqueue")

// Descriptor flags (§2.7.5).
const (
	descFlagNext     = 1
	descFlagWrite    = 2
	descFlagIndirect = 4

	descSize = 16
	// maxIndirectEntries bounds an indirect table to what a 16-bit next
	// field can index.
	maxIndirectEntries = 1 << 16
)

// descriptor is one struct virtq_desc, copied out of guest memory once so
// that the guest changing it afterwards cannot change what was checked.
type descriptor struct {
	addr  memory.GuestAddr
	len   uint32
	flags uint16
	next  uint16
}

func readDescriptor(mem Memory, table memory.GuestAddr, i uint16) (descriptor, error) {
	addr := table + memory.GuestAddr(i)*descSize
	s, err := mem.Slice(addr, descSize)
	if err != nil {
		return descriptor{}, fmt.Errorf("%w: descriptor %d at %#x: %w", ErrInvalidChain, i, uint64(addr), err)
	}
	return descriptor{
		addr:  memory.GuestAddr(binary.LittleEndian.Uint64(s[0:])),
		len:   binary.LittleEndian.Uint32(s[8:]),
		flags: binary.LittleEndian.Uint16(s[12:]),
		next:  binary.LittleEndian.Uint16(s[14:]),
	}, nil
}

// Buffer is one checked guest buffer of a chain: [Addr, Addr+Len) lies
// wholly inside one RAM region.
type Buffer struct {
	Addr memory.GuestAddr
	Len  uint32
}

// Chain is a validated descriptor chain popped from a queue: zero or more
// device-readable buffers followed by zero or more device-writable ones,
// indirect tables already followed. Return it with Queue.PushUsed(c.Head,
// written).
type Chain struct {
	// Head is the index of the chain's first descriptor, the id that goes
	// back in the used ring.
	Head uint16

	mem       Memory
	bufs      []Buffer // readable first, then writable
	nReadable int
	readLen   uint32
	writeLen  uint32
	inline    [4]Buffer // bufs' backing array for the usual short chains
}

// Readable returns the device-readable buffers in order.
func (c *Chain) Readable() []Buffer { return c.bufs[:c.nReadable] }

// Writable returns the device-writable buffers in order.
func (c *Chain) Writable() []Buffer { return c.bufs[c.nReadable:] }

// ReadableLen is the total size of the readable buffers.
func (c *Chain) ReadableLen() uint32 { return c.readLen }

// WritableLen is the total size of the writable buffers.
func (c *Chain) WritableLen() uint32 { return c.writeLen }

// Reader returns a reader over the readable part, from its start.
func (c *Chain) Reader() *Reader {
	return &Reader{cursor: cursor{mem: c.mem, bufs: c.Readable(), left: uint64(c.readLen)}}
}

// Writer returns a writer over the writable part, from its start.
func (c *Chain) Writer() *Writer {
	return &Writer{cursor: cursor{mem: c.mem, bufs: c.Writable(), left: uint64(c.writeLen)}}
}

// walkChain follows the chain starting at head and checks every rule of
// §2.7.5 that protects the device: indices inside their table, at most
// maxLen data descriptors (which also ends any loop), every buffer inside
// RAM, total length below 2^32, readable before writable, and indirect
// tables only when negotiated, never nested, never combined with NEXT, a
// whole number of descriptors and inside RAM.
func walkChain(mem Memory, table memory.GuestAddr, size uint16, head uint16, indirectOK bool, maxLen int) (*Chain, error) {
	if head >= size {
		return nil, fmt.Errorf("%w: chain head %d is outside the %d-entry descriptor table", ErrInvalidChain, head, size)
	}
	c := &Chain{Head: head, mem: mem}
	c.bufs = c.inline[:0]
	tableLen := uint32(size)
	inIndirect := false
	writable := false
	var total uint64
	count := 0
	i := head
	for {
		d, err := readDescriptor(mem, table, i)
		if err != nil {
			return nil, err
		}
		if d.flags&descFlagIndirect != 0 {
			switch {
			case !indirectOK:
				return nil, fmt.Errorf("%w: descriptor %d is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated", ErrInvalidChain, i)
			case inIndirect:
				return nil, fmt.Errorf("%w: nested indirect descriptor %d", ErrInvalidChain, i)
			case d.flags&descFlagNext != 0:
				return nil, fmt.Errorf("%w: descriptor %d has both INDIRECT and NEXT", ErrInvalidChain, i)
			case d.len == 0 || d.len%descSize != 0:
				return nil, fmt.Errorf("%w: indirect table of %d bytes is not a whole number of descriptors", ErrInvalidChain, d.len)
			case d.len/descSize > maxIndirectEntries:
				return nil, fmt.Errorf("%w: indirect table of %d descriptors exceeds %d", ErrInvalidChain, d.len/descSize, maxIndirectEntries)
			}
			if err := checkRange(mem, "indirect table", d.addr, uint64(d.len)); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalidChain, err)
			}
			table, tableLen, inIndirect, i = d.addr, d.len/descSize, true, 0
			continue
		}
		count++
		if count > maxLen {
			return nil, fmt.Errorf("%w: chain from head %d is longer than %d descriptors (a loop?)", ErrInvalidChain, head, maxLen)
		}
		if d.flags&descFlagWrite != 0 {
			writable = true
		} else if writable {
			return nil, fmt.Errorf("%w: device-readable descriptor %d follows a device-writable one", ErrInvalidChain, i)
		}
		total += uint64(d.len)
		if total > math.MaxUint32 {
			return nil, fmt.Errorf("%w: chain from head %d is longer than 4 GiB", ErrInvalidChain, head)
		}
		if d.len > 0 {
			if err := checkRange(mem, "buffer", d.addr, uint64(d.len)); err != nil {
				return nil, fmt.Errorf("%w: descriptor %d: %w", ErrInvalidChain, i, err)
			}
			c.bufs = append(c.bufs, Buffer{Addr: d.addr, Len: d.len})
			if writable {
				c.writeLen += d.len
			} else {
				c.readLen += d.len
				c.nReadable++
			}
		}
		if d.flags&descFlagNext == 0 {
			return c, nil
		}
		if uint32(d.next) >= tableLen {
			return nil, fmt.Errorf("%w: descriptor %d points at %d, outside its %d-entry table", ErrInvalidChain, i, d.next, tableLen)
		}
		i = d.next
	}
}

// cursor walks a list of checked buffers.
type cursor struct {
	mem  Memory
	bufs []Buffer
	i    int    // current buffer
	off  uint32 // offset within bufs[i]
	left uint64 // bytes from the position to the end
}

// Len is the number of bytes left.
func (c *cursor) Len() int { return int(c.left) }

// Buffers appends to dst the guest memory of the next n bytes, without
// moving the position, so that a device can hand guest memory straight to
// a system call (preadv, writev). The slices alias guest memory: the guest
// may change them at any time, so parse nothing from them twice.
func (c *cursor) Buffers(dst [][]byte, n int) ([][]byte, error) {
	if n < 0 || uint64(n) > c.left {
		return dst, fmt.Errorf("virtio: %d bytes asked, %d left in the chain", n, c.left)
	}
	i, off := c.i, c.off
	for n > 0 {
		b := c.bufs[i]
		take := b.Len - off
		if uint64(take) > uint64(n) {
			take = uint32(n)
		}
		s, err := c.mem.Slice(b.Addr+memory.GuestAddr(off), uint64(take))
		if err != nil {
			return dst, err // cannot happen for a checked buffer; memory never shrinks
		}
		dst = append(dst, s)
		n -= int(take)
		off += take
		if off == b.Len {
			i, off = i+1, 0
		}
	}
	return dst, nil
}

// advance moves the position n bytes on, calling each for every piece.
func (c *cursor) advance(n int, each func(addr memory.GuestAddr, s []byte)) error {
	if n < 0 || uint64(n) > c.left {
		return fmt.Errorf("virtio: %d bytes asked, %d left in the chain", n, c.left)
	}
	for n > 0 {
		b := c.bufs[c.i]
		take := b.Len - c.off
		if uint64(take) > uint64(n) {
			take = uint32(n)
		}
		if each != nil {
			addr := b.Addr + memory.GuestAddr(c.off)
			s, err := c.mem.Slice(addr, uint64(take))
			if err != nil {
				return err
			}
			each(addr, s)
		}
		n -= int(take)
		c.left -= uint64(take)
		c.off += take
		if c.off == b.Len {
			c.i, c.off = c.i+1, 0
		}
	}
	return nil
}

// Reader reads the device-readable part of a chain (io.Reader).
type Reader struct{ cursor }

// Read copies from guest memory; it returns io.EOF at the end of the
// readable part.
func (r *Reader) Read(p []byte) (int, error) {
	if r.left == 0 {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := len(p)
	if uint64(n) > r.left {
		n = int(r.left)
	}
	done := 0
	err := r.advance(n, func(_ memory.GuestAddr, s []byte) { done += copy(p[done:], s) })
	return done, err
}

// Advance skips n bytes (after the device consumed them through Buffers).
func (r *Reader) Advance(n int) error { return r.advance(n, nil) }

// Writer writes the device-writable part of a chain (io.Writer) and counts
// what was written, the length that goes into the used ring.
type Writer struct {
	cursor
	written uint32
}

// Write copies p into guest memory. If p does not fit, it writes what fits
// and returns io.ErrShortWrite.
func (w *Writer) Write(p []byte) (int, error) {
	n := len(p)
	if uint64(n) > w.left {
		n = int(w.left)
	}
	done := 0
	err := w.advance(n, func(addr memory.GuestAddr, s []byte) {
		done += copy(s, p[done:])
		markDirty(w.mem, addr, uint64(len(s)))
	})
	w.written += uint32(done)
	if err == nil && done < len(p) {
		err = io.ErrShortWrite
	}
	return done, err
}

// Advance records that the device filled the next n bytes itself (through
// Buffers) and moves past them.
func (w *Writer) Advance(n int) error {
	err := w.advance(n, func(addr memory.GuestAddr, s []byte) { markDirty(w.mem, addr, uint64(len(s))) })
	if err == nil {
		w.written += uint32(n)
	}
	return err
}

// Written is the number of bytes written so far.
func (w *Writer) Written() uint32 { return w.written }
