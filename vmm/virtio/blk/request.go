package blk

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/voltvmm/volt/vmm/virtio"
)

// request is a parsed struct virtio_blk_req: the header, and the sizes of
// the data before (dataOut, device-readable) and after (dataIn,
// device-writable, before the status byte) it.
type request struct {
	typ     uint32
	sector  uint64
	dataOut uint32
	dataIn  uint32
}

// segment is one struct virtio_blk_discard_write_zeroes.
type segment struct {
	sector  uint64
	sectors uint32
	flags   uint32
}

// handle serves one chain. It returns the length for the used ring, or a
// wait when the rate limiter defers the request (then nothing was done and
// the caller puts the chain back). A request the driver got wrong is
// answered with an error status; it never breaks the device.
func (d *Device) handle(c *virtio.Chain) (uint32, time.Duration, error) {
	if c.WritableLen() == 0 {
		// §5.2.6: the status byte is the last device-writable byte; with
		// none there is nowhere to answer.
		d.stats.Malformed++
		d.warn("virtio-blk: request without a status byte, returned unanswered", "head", c.Head, "readable", c.ReadableLen())
		return 0, 0, nil
	}
	r, w := c.Reader(), c.Writer()
	req, status := d.parse(c, r)
	if status == statusOK {
		if ok, wait := d.limiter.Consume(1, req.cost()); !ok {
			return 0, wait, nil
		}
		status = d.execute(req, r, w)
	}
	if status != statusOK {
		d.stats.Errors++
	}
	// The status byte goes last, whatever was written before it. Like
	// QEMU, report the whole writable part as used: the data area of a
	// failed read holds nothing of the host's, only what the guest had.
	if err := w.Advance(int(req.dataIn) - int(w.Written())); err != nil {
		return 0, 0, fmt.Errorf("virtio-blk: place status byte: %w", err)
	}
	if _, err := w.Write([]byte{status}); err != nil {
		return 0, 0, fmt.Errorf("virtio-blk: write status byte: %w", err)
	}
	return w.Written(), 0, nil
}

// cost is what the rate limiter charges: the data moved.
func (req request) cost() uint64 {
	switch req.typ {
	case reqIn:
		return uint64(req.dataIn)
	case reqOut:
		return uint64(req.dataOut)
	}
	return 0
}

// parseHeader decodes the 16-byte request header.
func parseHeader(h []byte) (typ uint32, sector uint64) {
	return binary.LittleEndian.Uint32(h[0:]), binary.LittleEndian.Uint64(h[8:])
}

// parse reads and checks the header and the request's shape. It returns
// statusOK when the request can be executed, or the status to answer.
func (d *Device) parse(c *virtio.Chain, r *virtio.Reader) (request, byte) {
	req := request{dataIn: c.WritableLen() - 1}
	if c.ReadableLen() < headerSize {
		return req, statusIOErr
	}
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return req, statusIOErr
	}
	req.typ, req.sector = parseHeader(h[:])
	req.dataOut = c.ReadableLen() - headerSize
	switch req.typ {
	case reqIn:
		if req.dataOut != 0 || req.dataIn%SectorSize != 0 || !d.inRange(req.sector, uint64(req.dataIn)/SectorSize) {
			return req, statusIOErr
		}
	case reqOut:
		// §5.2.6.2: with VIRTIO_BLK_F_RO offered, writes fail and write nothing.
		if d.readOnly || req.dataIn != 0 || req.dataOut%SectorSize != 0 || !d.inRange(req.sector, uint64(req.dataOut)/SectorSize) {
			return req, statusIOErr
		}
	case reqFlush, reqGetID:
	case reqDiscard, reqWriteZeroes:
		feature := uint64(FeatureDiscard)
		if req.typ == reqWriteZeroes {
			feature = FeatureWriteZeroes
		}
		if d.act.Features&feature == 0 {
			return req, statusUnsupp
		}
		if d.readOnly || req.dataIn != 0 || req.dataOut == 0 || req.dataOut%segmentSize != 0 || req.dataOut/segmentSize > MaxDiscardSegments {
			return req, statusIOErr
		}
	default:
		return req, statusUnsupp
	}
	return req, statusOK
}

// inRange reports whether n sectors from sector lie on the disk, without
// overflow.
func (d *Device) inRange(sector, n uint64) bool {
	return sector <= d.capacity && n <= d.capacity-sector
}

// execute runs a parsed request against the backend.
func (d *Device) execute(req request, r *virtio.Reader, w *virtio.Writer) byte {
	var err error
	switch req.typ {
	case reqIn:
		d.bufs, err = w.Buffers(d.bufs[:0], int(req.dataIn))
		if err == nil {
			err = d.transfer(d.bufs, int64(req.sector)*SectorSize, false)
		}
		if err == nil {
			err = w.Advance(int(req.dataIn))
		}
		d.stats.Reads++
		d.stats.BytesRead += uint64(req.dataIn)
	case reqOut:
		d.bufs, err = r.Buffers(d.bufs[:0], int(req.dataOut))
		if err == nil {
			err = d.transfer(d.bufs, int64(req.sector)*SectorSize, true)
		}
		if err == nil && !d.flush {
			err = d.backend.Flush()
		}
		d.stats.Writes++
		d.stats.BytesWritten += uint64(req.dataOut)
	case reqFlush:
		d.stats.Flushes++
		if !d.readOnly {
			err = d.backend.Flush()
		}
	case reqGetID:
		d.stats.IDs++
		_, err = w.Write(d.id[:min(req.dataIn, IDLen)])
	case reqDiscard, reqWriteZeroes:
		return d.discardOrZero(req, r)
	}
	clear(d.bufs) // drop references to guest memory
	if err != nil {
		d.warn("virtio-blk: request failed", "type", req.typ, "sector", req.sector, "err", err)
		return statusIOErr
	}
	return statusOK
}

// transfer moves data between guest buffers and the disk at off.
func (d *Device) transfer(bufs [][]byte, off int64, write bool) error {
	var want int
	for _, b := range bufs {
		want += len(b)
	}
	if d.vector != nil {
		var n int
		var err error
		if write {
			n, err = d.vector.WriteVAt(bufs, off)
		} else {
			n, err = d.vector.ReadVAt(bufs, off)
		}
		if err == nil && n != want {
			err = fmt.Errorf("%d of %d bytes", n, want)
		}
		return err
	}
	for _, b := range bufs {
		var n int
		var err error
		if write {
			n, err = d.backend.WriteAt(b, off)
		} else {
			n, err = d.backend.ReadAt(b, off)
			if err == io.EOF && n == len(b) {
				err = nil
			}
		}
		if err == nil && n != len(b) {
			err = fmt.Errorf("%d of %d bytes at %d", n, len(b), off)
		}
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// discardOrZero reads every segment, checks them all (flags, range), then
// applies them. §5.2.6.2: unknown flags, or unmap on a discard, are
// VIRTIO_BLK_S_UNSUPP.
func (d *Device) discardOrZero(req request, r *virtio.Reader) byte {
	n := int(req.dataOut / segmentSize)
	segs := make([]segment, n)
	var raw [segmentSize]byte
	for i := range segs {
		if _, err := io.ReadFull(r, raw[:]); err != nil {
			return statusIOErr
		}
		segs[i] = parseSegment(raw[:])
	}
	allowed := uint32(0)
	if req.typ == reqWriteZeroes {
		allowed = segFlagUnmap
	}
	for _, s := range segs {
		if s.flags&^allowed != 0 {
			return statusUnsupp
		}
	}
	for _, s := range segs {
		if !d.inRange(s.sector, uint64(s.sectors)) {
			return statusIOErr
		}
	}
	for _, s := range segs {
		off, length := int64(s.sector)*SectorSize, int64(s.sectors)*SectorSize
		var err error
		if req.typ == reqDiscard {
			d.stats.Discards++
			err = d.discard.Discard(off, length)
		} else {
			d.stats.WriteZeroes++
			err = d.zeroes.WriteZeroes(off, length, s.flags&segFlagUnmap != 0)
		}
		if err != nil {
			d.warn("virtio-blk: discard/write-zeroes failed", "type", req.typ, "sector", s.sector, "sectors", s.sectors, "err", err)
			return statusIOErr
		}
	}
	if req.typ == reqWriteZeroes && !d.flush {
		if err := d.backend.Flush(); err != nil {
			return statusIOErr
		}
	}
	return statusOK
}

func parseSegment(b []byte) segment {
	return segment{
		sector:  binary.LittleEndian.Uint64(b[0:]),
		sectors: binary.LittleEndian.Uint32(b[8:]),
		flags:   binary.LittleEndian.Uint32(b[12:]),
	}
}

// warn logs a request failure. A guest can cause failures at will, so
// after the first few only every 1024th is logged, with the count.
func (d *Device) warn(msg string, args ...any) {
	d.warnings++
	if d.warnings > 16 && d.warnings%1024 != 0 {
		return
	}
	d.log.Warn(msg, append(args, "failures", d.warnings)...)
}
