// Package blk is the virtio block device (virtio 1.2 §5.2, device ID 2)
// over a Backend: reads, writes, flushes, device-ID queries, discards and
// write-zeroes from one request queue, each request checked (header,
// status byte, sector range) before the backend sees it, and optionally
// rate limited. Linux's virtio_blk drives it as /dev/vda.
package blk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
)

const (
	// QueueSize is the request queue's maximum size.
	QueueSize = 256
	// SectorSize is the unit of the protocol, whatever the block size.
	SectorSize = 512
	// IDLen is the length of the device ID string (VIRTIO_BLK_T_GET_ID).
	IDLen = 20
	// SegMax is the most data segments a request may have (seg_max): the
	// queue less the header and status descriptors.
	SegMax = QueueSize - 2
	// SizeMax is the largest data segment (size_max).
	SizeMax = 1 << 20
	// MaxDiscardSegments bounds the segments of one discard or
	// write-zeroes request (max_discard_seg, max_write_zeroes_seg).
	MaxDiscardSegments = 32
)

// Feature bits (§5.2.3).
const (
	FeatureSizeMax     = 1 << 1
	FeatureSegMax      = 1 << 2
	FeatureRO          = 1 << 5
	FeatureBlkSize     = 1 << 6
	FeatureFlush       = 1 << 9
	FeatureDiscard     = 1 << 13
	FeatureWriteZeroes = 1 << 14
)

// Request types and status values (§5.2.6).
const (
	reqIn          = 0
	reqOut         = 1
	reqFlush       = 4
	reqGetID       = 8
	reqDiscard     = 11
	reqWriteZeroes = 13

	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2

	headerSize     = 16
	segmentSize    = 16 // struct virtio_blk_discard_write_zeroes
	segFlagUnmap   = 1
	configSpaceLen = 60 // struct virtio_blk_config up to unused1
)

// Config describes a block device.
type Config struct {
	Backend Backend
	// ReadOnly makes the device read-only even on a writable backend.
	ReadOnly bool
	// ID is the device ID string (at most 20 bytes); empty means the
	// backend's (Identifier), if any.
	ID string
	// BlockSize is the logical block size offered to the guest
	// (VIRTIO_BLK_F_BLK_SIZE); 0 means the backend's (File.BlockSize) or
	// 512. It must be a power of two from 512 to 64 KiB.
	BlockSize uint32
	// RateLimit limits requests (ops) and data bytes; zero limits nothing.
	RateLimit ratelimit.Config
}

// Device is a virtio-blk device.
type Device struct {
	backend  Backend
	vector   VectorBackend
	discard  Discarder
	zeroes   ZeroWriter
	readOnly bool
	id       [IDLen]byte
	capacity uint64 // sectors
	features uint64
	config   [configSpaceLen]byte // immutable after New
	limiter  *ratelimit.Limiter

	act    virtio.Activation
	active bool
	// negotiated flush: without it every write is made durable before it
	// completes (§5.2.6.4, writethrough).
	flush    bool
	log      *slog.Logger
	warnings uint64
	bufs     [][]byte
	stats    Stats
}

// Stats counts what the device did, for metrics and tests.
type Stats struct {
	Reads, Writes, Flushes, IDs, Discards, WriteZeroes uint64
	BytesRead, BytesWritten                            uint64
	// Errors counts requests answered VIRTIO_BLK_S_IOERR or UNSUPP;
	// Malformed those that had no status byte at all.
	Errors, Malformed uint64
	// Throttled counts the times the rate limiter deferred a request.
	Throttled uint64
}

var _ virtio.Device = (*Device)(nil)

// New returns a block device over cfg.Backend.
func New(cfg Config) (*Device, error) {
	if cfg.Backend == nil {
		return nil, errors.New("virtio-blk: no backend")
	}
	size := cfg.Backend.Size()
	if size < SectorSize {
		return nil, fmt.Errorf("virtio-blk: backend of %d bytes holds no whole 512-byte sector", size)
	}
	if len(cfg.ID) > IDLen {
		return nil, fmt.Errorf("virtio-blk: device ID %q is longer than %d bytes", cfg.ID, IDLen)
	}
	l, err := ratelimit.New(cfg.RateLimit)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	d := &Device{backend: cfg.Backend, capacity: uint64(size) / SectorSize, limiter: l, readOnly: cfg.ReadOnly}
	if ro, ok := cfg.Backend.(ReadOnlyBackend); ok && ro.ReadOnly() {
		d.readOnly = true
	}
	d.vector, _ = cfg.Backend.(VectorBackend)
	if !d.readOnly {
		d.discard, _ = cfg.Backend.(Discarder)
		d.zeroes, _ = cfg.Backend.(ZeroWriter)
	}
	id := cfg.ID
	if id == "" {
		if i, ok := cfg.Backend.(Identifier); ok {
			id = i.ID()
		}
	}
	copy(d.id[:], id)

	blockSize := cfg.BlockSize
	if blockSize == 0 {
		blockSize = SectorSize
		if f, ok := cfg.Backend.(interface{ BlockSize() int64 }); ok {
			blockSize = uint32(f.BlockSize())
		}
	}
	if blockSize < SectorSize || blockSize > 64<<10 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("virtio-blk: block size %d is not a power of two from 512 to 64 KiB", blockSize)
	}

	d.features = virtio.QueueFeatures | FeatureFlush | FeatureSegMax | FeatureSizeMax
	if d.readOnly {
		d.features |= FeatureRO
	}
	if blockSize != SectorSize {
		d.features |= FeatureBlkSize
	}
	if d.discard != nil {
		d.features |= FeatureDiscard
	}
	if d.zeroes != nil {
		d.features |= FeatureWriteZeroes
	}
	c := d.config[:]
	le := binary.LittleEndian
	le.PutUint64(c[0:], d.capacity)
	le.PutUint32(c[8:], SizeMax)
	le.PutUint32(c[12:], SegMax)
	le.PutUint32(c[20:], blockSize)
	// Discard and write-zeroes limits: any length within the disk, a
	// bounded number of segments, sector granularity.
	le.PutUint32(c[36:], math.MaxUint32)
	le.PutUint32(c[40:], MaxDiscardSegments)
	le.PutUint32(c[44:], blockSize/SectorSize)
	le.PutUint32(c[48:], math.MaxUint32)
	le.PutUint32(c[52:], MaxDiscardSegments)
	c[56] = 1 // write_zeroes_may_unmap
	return d, nil
}

// Capacity is the disk size in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// ReadOnly reports whether the device refuses writes.
func (d *Device) ReadOnly() bool { return d.readOnly }

// Stats returns the counters. Call it only while the worker is stopped, or
// accept a torn read.
func (d *Device) Stats() Stats { return d.stats }

// Type implements virtio.Device.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device: one request queue (no
// VIRTIO_BLK_F_MQ).
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device. The configuration never changes, so
// no lock is needed.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < uint64(len(d.config)) {
		copy(data, d.config[offset:])
	}
}

// WriteConfig implements virtio.Device: without VIRTIO_BLK_F_CONFIG_WCE
// every field is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if len(a.Queues) != 1 || len(a.Notify) != 1 {
		return fmt.Errorf("virtio-blk: activated with %d queues", len(a.Queues))
	}
	d.act, d.active = a, true
	d.flush = a.Features&FeatureFlush != 0
	d.log = a.Log
	if d.log == nil {
		d.log = slog.Default()
	}
	return nil
}

// Reset implements virtio.Device.
func (d *Device) Reset() { d.act, d.active, d.flush = virtio.Activation{}, false, false }

// Run implements virtio.Device: serve the queue on every notification, and
// when the rate limiter defers a request, again when its timer fires.
func (d *Device) Run(ctx context.Context) error {
	if !d.active {
		return nil
	}
	return virtio.ServeQueue(ctx, d.act.Queues[0], d.act.Notify[0], d.serveChain)
}

// drain serves what the queue holds now (benchmarks call it directly).
func (d *Device) drain(q *virtio.Queue) (time.Duration, error) {
	return virtio.DrainQueue(q, d.serveChain)
}

// serveChain is the queue's virtio.ChainHandler: one request, counted
// when the rate limiter defers it.
func (d *Device) serveChain(c *virtio.Chain) (uint32, time.Duration, error) {
	written, wait, err := d.handle(c)
	if wait > 0 {
		d.stats.Throttled++
	}
	return written, wait, err
}
