// Package rng is the virtio entropy device (virtio 1.2 §5.4, device ID 4):
// the driver posts device-writable buffers on its one queue and the device
// fills them from the host's getrandom(2). Linux exposes it as /dev/hwrng.
package rng

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
)

const (
	// QueueSize is the maximum size of the request queue.
	QueueSize = 256
	// DefaultMaxRequest bounds the bytes given per buffer: §5.4.6.1 lets
	// the device use less than the whole buffer, and a guest asking for a
	// gigabyte must not keep the worker busy filling it.
	DefaultMaxRequest = 64 << 10
)

// Config describes an entropy device.
type Config struct {
	// MaxRequest bounds the bytes written per request; 0 means
	// DefaultMaxRequest.
	MaxRequest int
	// RateLimit limits requests (ops) and bytes; zero limits nothing.
	RateLimit ratelimit.Config
	// Random fills a buffer with random bytes; nil means getrandom(2).
	// Tests replace it.
	Random func([]byte) (int, error)
}

// Device is a virtio-rng device.
type Device struct {
	maxRequest int
	random     func([]byte) (int, error)
	limiter    *ratelimit.Limiter
	act        virtio.Activation
	active     bool
	bufs       [][]byte
}

var _ virtio.Device = (*Device)(nil)

// New returns an entropy device.
func New(cfg Config) (*Device, error) {
	if cfg.MaxRequest < 0 {
		return nil, fmt.Errorf("virtio-rng: negative maximum request %d", cfg.MaxRequest)
	}
	if cfg.MaxRequest == 0 {
		cfg.MaxRequest = DefaultMaxRequest
	}
	if cfg.Random == nil {
		cfg.Random = func(b []byte) (int, error) { return unix.Getrandom(b, 0) }
	}
	l, err := ratelimit.New(cfg.RateLimit)
	if err != nil {
		return nil, fmt.Errorf("virtio-rng: %w", err)
	}
	return &Device{maxRequest: cfg.MaxRequest, random: cfg.Random, limiter: l}, nil
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceEntropy }

// Features implements virtio.Device: no device-specific features (§5.4.3).
func (d *Device) Features() uint64 { return virtio.QueueFeatures }

// QueueMaxSizes implements virtio.Device: one request queue.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device: there is no configuration space.
func (d *Device) ReadConfig(offset uint64, data []byte) { clear(data) }

// WriteConfig implements virtio.Device.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if len(a.Queues) != 1 || len(a.Notify) != 1 {
		return fmt.Errorf("virtio-rng: activated with %d queues", len(a.Queues))
	}
	if a.Log == nil {
		a.Log = slog.Default()
	}
	d.act, d.active = a, true
	return nil
}

// Reset implements virtio.Device.
func (d *Device) Reset() { d.act, d.active = virtio.Activation{}, false }

// Run implements virtio.Device: serve the queue on every notification, and
// when the rate limiter defers a request, again when its timer fires.
func (d *Device) Run(ctx context.Context) error {
	if !d.active {
		return nil
	}
	return virtio.ServeQueue(ctx, d.act.Queues[0], d.act.Notify[0], func(c *virtio.Chain) (uint32, time.Duration, error) {
		n := min(int(c.WritableLen()), d.maxRequest)
		if ok, wait := d.limiter.Consume(1, uint64(n)); !ok {
			return 0, wait, nil
		}
		written, err := d.serve(c, n)
		return written, 0, err
	})
}

// serve fills the first n bytes of the chain's writable part straight in
// guest memory. A chain with readable buffers breaks the driver's side of
// §5.4.6.1 but is harmless: the readable part is ignored.
func (d *Device) serve(c *virtio.Chain, n int) (uint32, error) {
	if c.ReadableLen() > 0 {
		d.act.Log.Debug("virtio-rng: request with device-readable buffers; ignoring them", "bytes", c.ReadableLen())
	}
	w := c.Writer()
	var err error
	d.bufs, err = w.Buffers(d.bufs[:0], n)
	if err != nil {
		return 0, err
	}
	for _, b := range d.bufs {
		for len(b) > 0 {
			k, err := d.random(b)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("virtio-rng: getrandom: %w", err)
			}
			if k <= 0 {
				return 0, fmt.Errorf("virtio-rng: getrandom returned %d bytes", k)
			}
			b = b[k:]
		}
	}
	if err := w.Advance(n); err != nil {
		return 0, err
	}
	clear(d.bufs) // drop references to guest memory
	return w.Written(), nil
}
