package vsock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/vmm/virtio"
)

// Queues of the device (§5.10.2), and their sizes (Firecracker's 256).
const (
	rxQueue   = 0
	txQueue   = 1
	evQueue   = 2
	numQueues = 3
	QueueSize = 256
)

// EventTransportReset is VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.5): the
// guest closes its connections and re-reads its CID; listeners survive.
const EventTransportReset uint32 = 0

// eventSize is struct virtio_vsock_event: one le32 id.
const eventSize = 4

// configSize is struct virtio_vsock_config: le64 guest_cid.
const configSize = 8

// Notifier tokens in the muxer's epoll set.
const kickToken = 0

var errNotActive = errors.New("vsock: device is not active")

// Option changes a device's defaults.
type Option func(*Device)

// WithLogger sets the device's logger (the default is slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(d *Device) { d.log = l } }

// WithMaxConnections bounds the host sockets the device holds at once.
func WithMaxConnections(n int) Option { return func(d *Device) { d.maxConns = n } }

// WithRequestTimeout sets the request timeout (Config.RequestTimeout) of a
// device whose Config cannot carry it, as a restored one's (NewFromState);
// zero leaves it as it is. The caller validates it (ValidateRequestTimeout).
func WithRequestTimeout(t time.Duration) Option {
	return func(d *Device) {
		if t != 0 {
			d.params.requestTimeout = t
		}
	}
}

// withParams changes buffer sizes and timeouts (tests).
func withParams(p connParams) Option { return func(d *Device) { d.params = p } }

// Device is a virtio-vsock device with the hybrid Unix-socket host side.
//
// The host socket is bound by New, so clients may connect before the guest
// driver is up (they wait in the listen backlog). Everything else runs in
// Run, on the transport's worker goroutine.
type Device struct {
	cid      uint64
	udsPath  string
	log      *slog.Logger
	params   connParams
	maxConns int
	metrics  Metrics
	mux      *muxer
	kick     int // eventfd in the muxer's epoll set: notifications and stop

	// Written by Activate/Reset/Restore, read by Run; never concurrently.
	act       virtio.Activation
	active    bool
	dirty     virtio.DirtyMarker // nil when memory tracks no VMM writes
	resetOwed bool               // a TRANSPORT_RESET event is due
	// resetPending: the reset went out and the guest has not shown yet that
	// it handled it (see sendTransportReset); until then host-initiated
	// REQUESTs wait, or the reset would also close them. resetUntil bounds
	// the wait; evHeld are the event buffers popped meanwhile.
	resetPending bool
	resetUntil   time.Time
	evHeld       []*virtio.Chain

	notified atomic.Uint32 // queue bits the forwarder saw

	// Reused on every packet: no allocation on the data path.
	sg, sg2 sgList
	hdrBuf  [HeaderSize]byte
}

var _ virtio.Device = (*Device)(nil)

// New validates cfg and binds the host socket at cfg.UDSPath.
func New(cfg Config, opts ...Option) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Device{cid: cfg.GuestCID, udsPath: cfg.UDSPath, log: slog.Default(), params: defaultParams(), maxConns: DefaultMaxConns}
	if cfg.RequestTimeout != 0 {
		d.params.requestTimeout = cfg.RequestTimeout
	}
	for _, o := range opts {
		o(d)
	}
	if !cfg.GuestPortPathsFit() {
		d.log.Warn("vsock: uds_path is long; guest connections to high port numbers will be refused (their socket paths exceed 107 bytes)", "uds_path", cfg.UDSPath)
	}
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("vsock: eventfd: %w", err)
	}
	mux, err := newMuxer(cfg.GuestCID, cfg.UDSPath, muxerOptions{params: d.params, maxConns: d.maxConns, log: d.log, metrics: &d.metrics})
	if err != nil {
		unix.Close(kick)
		return nil, err
	}
	if err := mux.addNotifier(kick, kickToken); err != nil {
		mux.close()
		unix.Close(kick)
		return nil, err
	}
	d.mux, d.kick = mux, kick
	return d, nil
}

// Close closes every host socket and removes the host socket file. Run must
// not be running.
func (d *Device) Close() error {
	if d.mux != nil {
		d.mux.close()
		d.mux = nil
	}
	if d.kick >= 0 {
		unix.Close(d.kick)
		d.kick = -1
	}
	return nil
}

// Config returns the device's guest CID and host socket path.
func (d *Device) Config() Config { return Config{GuestCID: d.cid, UDSPath: d.udsPath} }

// Metrics returns the device's counters; they are safe to read at any time.
func (d *Device) Metrics() *Metrics { return &d.metrics }

// Type implements virtio.Device.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceVsock }

// Features implements virtio.Device: stream sockets only (no
// VIRTIO_VSOCK_F_SEQPACKET), with the queue features of the core.
func (d *Device) Features() uint64 { return virtio.QueueFeatures }

// QueueMaxSizes implements virtio.Device: rx, tx and event queues.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// ReadConfig implements virtio.Device: the guest CID, little-endian.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [configSize]byte
	binary.LittleEndian.PutUint64(cfg[:], d.cid)
	for i := range data {
		data[i] = 0
		if o := offset + uint64(i); o < configSize {
			data[i] = cfg[o]
		}
	}
}

// WriteConfig implements virtio.Device: the configuration is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {
	d.log.Debug("vsock: guest wrote the read-only configuration space", "offset", offset, "len", len(data))
}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if len(a.Queues) != numQueues {
		return fmt.Errorf("vsock: %d queues, want %d", len(a.Queues), numQueues)
	}
	if a.Memory == nil {
		return errors.New("vsock: activation without guest memory")
	}
	for _, i := range []int{rxQueue, txQueue} {
		if !a.Queues[i].Active() {
			return fmt.Errorf("vsock: the driver did not make queue %d ready", i)
		}
	}
	if a.Log != nil {
		d.log = a.Log
		d.mux.log = a.Log
	}
	d.act, d.active = a, true
	d.dirty, _ = a.Memory.(virtio.DirtyMarker)
	return nil
}

// Reset implements virtio.Device: every connection ends (the guest's driver
// starts over); the host socket stays bound.
func (d *Device) Reset() {
	d.mux.resetConns()
	d.act, d.active, d.dirty, d.resetOwed = virtio.Activation{}, false, nil, false
	d.resetPending, d.evHeld = false, nil
	d.mux.holdRequests(false)
	d.notified.Store(0)
}

// Run implements virtio.Device: the worker. It waits in one epoll set for
// the host sockets, the connection timers and a kick eventfd, which the
// queue notifications and ctx's cancellation write to.
func (d *Device) Run(ctx context.Context) error {
	if !d.active {
		return errNotActive
	}
	// The wake-up must be over before Run returns: Close then closes the
	// kick eventfd, whose number a later wake would write to otherwise
	// (found by the race detector).
	woke := make(chan struct{})
	stopKick := context.AfterFunc(ctx, func() {
		defer close(woke)
		d.wake()
	})
	defer func() {
		if !stopKick() {
			<-woke
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	fwdCtx, cancelFwd := context.WithCancel(ctx)
	defer cancelFwd()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.forwardNotifications(fwdCtx)
	}()

	// Event buffers held for the reset handshake cannot stay popped across
	// a pause (the snapshot would lose them): give them back empty, which
	// Linux's event handler takes as "no event" and re-adds.
	defer d.releaseEventBuffers()

	// The first pass looks at every queue: a notification may have been
	// consumed before a pause.
	bits := uint32(1<<rxQueue | 1<<txQueue | 1<<evQueue)
	for {
		if err := d.process(bits); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := time.Duration(-1)
		if d.resetPending {
			wait = max(time.Until(d.resetUntil), 0)
		}
		fired, err := d.mux.poll(wait)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		if fired&(1<<kickToken) != 0 {
			d.drainKick()
		}
		bits = d.notified.Swap(0)
	}
}

// forwardNotifications turns the transport's notification channels into
// kicks of the epoll set (see /work/notes-team/vsock-needs.md: with the
// ioeventfds themselves the worker could wait on them directly).
func (d *Device) forwardNotifications(ctx context.Context) {
	chans := d.act.Notify
	var rx, tx, ev <-chan struct{}
	if len(chans) == numQueues {
		rx, tx, ev = chans[rxQueue], chans[txQueue], chans[evQueue]
	}
	for {
		var bit uint32
		select {
		case <-ctx.Done():
			return
		case <-rx:
			bit = 1 << rxQueue
		case <-tx:
			bit = 1 << txQueue
		case <-ev:
			bit = 1 << evQueue
		}
		if d.notified.Or(bit)&bit == 0 {
			d.wake()
		}
	}
}

// wake kicks the worker out of epoll_wait.
func (d *Device) wake() {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	unix.Write(d.kick, one[:])
}

func (d *Device) drainKick() {
	var b [8]byte
	unix.Read(d.kick, b[:])
}

// process runs the queues named by bits (tx first: guest packets make
// replies), then fills rx buffers with whatever the host side has, and
// signals the guest once per queue.
func (d *Device) process(bits uint32) error {
	q := d.act.Queues
	if bits&(1<<txQueue) != 0 {
		if err := d.processTx(q[txQueue]); err != nil {
			return err
		}
		if err := q[txQueue].SignalUsed(); err != nil {
			return err
		}
	}
	if d.resetOwed {
		if err := d.sendTransportReset(q[evQueue]); err != nil {
			return err
		}
	}
	if d.resetPending {
		if err := d.checkResetHandled(q[evQueue]); err != nil {
			return err
		}
	}
	if d.mux.hasRx() {
		if err := d.processRx(q[rxQueue]); err != nil {
			return err
		}
		if err := q[rxQueue].SignalUsed(); err != nil {
			return err
		}
	}
	return nil
}

// slices resolves a chain's buffers to guest memory, reusing dst.
func (d *Device) slices(bufs []virtio.Buffer, dst sgList) (sgList, error) {
	dst = dst[:0]
	for _, b := range bufs {
		s, err := d.act.Memory.Slice(b.Addr, uint64(b.Len))
		if err != nil {
			return dst, fmt.Errorf("vsock: %w", err) // checked by the queue; memory never shrinks
		}
		dst = append(dst, s)
	}
	return dst, nil
}

// processTx hands every packet on the tx queue to the muxer. Packets are
// always consumed (the muxer buffers or resets, it never refuses), so the
// guest's tx queue never stalls behind a slow host client.
func (d *Device) processTx(q *virtio.Queue) error {
	for {
		if err := q.DisableNotification(); err != nil {
			return err
		}
		for {
			c, err := q.Pop()
			if err != nil {
				return err
			}
			if c == nil {
				break
			}
			if err := d.handleTx(c); err != nil {
				return err
			}
			if err := q.PushUsed(c.Head, 0); err != nil {
				return err
			}
		}
		more, err := q.EnableNotification()
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
}

func (d *Device) handleTx(c *virtio.Chain) error {
	sg, err := d.slices(c.Readable(), d.sg)
	d.sg = sg
	if err != nil {
		return err
	}
	var h Header
	if len(sg) > 0 && len(sg[0]) >= HeaderSize {
		h, _ = DecodeHeader(sg[0])
	} else if sg.gather(d.hdrBuf[:]) == HeaderSize {
		h, _ = DecodeHeader(d.hdrBuf[:])
	} else {
		d.metrics.PacketsDropped.Add(1)
		d.log.Debug("vsock: tx chain shorter than a packet header", "len", c.ReadableLen())
		return nil
	}
	d.sg2 = sg.skip(HeaderSize, d.sg2)
	d.mux.send(h, d.sg2)
	return nil
}

// processRx fills the guest's rx buffers with packets from the muxer until
// either runs out.
func (d *Device) processRx(q *virtio.Queue) error {
	for d.mux.hasRx() {
		c, err := q.Pop()
		if err != nil {
			return err
		}
		if c == nil {
			// No buffers: ask to be told when the guest adds some, and look
			// once more in case it did meanwhile.
			more, err := q.EnableNotification()
			if err != nil || !more {
				return err
			}
			continue
		}
		written, err := d.fillRx(c)
		if err != nil {
			return err
		}
		if written < 0 {
			if err := q.UndoPop(); err != nil {
				return err
			}
			return nil
		}
		if err := q.PushUsed(c.Head, uint32(written)); err != nil {
			return err
		}
	}
	return nil
}

// fillRx writes one packet into an rx chain and returns its length, 0 for
// a buffer too small for a header (returned empty; the guest drops it), or
// -1 when the muxer had nothing after all.
func (d *Device) fillRx(c *virtio.Chain) (int, error) {
	if c.WritableLen() < HeaderSize {
		d.log.Debug("vsock: rx buffer shorter than a packet header", "len", c.WritableLen())
		return 0, nil
	}
	sg, err := d.slices(c.Writable(), d.sg)
	d.sg = sg
	if err != nil {
		return 0, err
	}
	payload := sg.skip(HeaderSize, d.sg2)
	payload = payload.limit(MaxPayload)
	d.sg2 = payload
	var h Header
	if !d.mux.recv(&h, payload) {
		return -1, nil
	}
	if len(sg[0]) >= HeaderSize {
		h.Encode(sg[0])
	} else {
		h.Encode(d.hdrBuf[:])
		sg.scatter(d.hdrBuf[:])
	}
	n := HeaderSize + int(h.Len)
	d.markDirty(c.Writable(), n)
	return n, nil
}

// markDirty reports the first n bytes written into bufs to memory that
// tracks the VMM's own writes (for diff snapshots).
func (d *Device) markDirty(bufs []virtio.Buffer, n int) {
	if d.dirty == nil {
		return
	}
	for _, b := range bufs {
		if n <= 0 {
			return
		}
		l := min(int(b.Len), n)
		d.dirty.MarkDirty(b.Addr, uint64(l))
		n -= l
	}
}

// resetAckTimeout bounds how long host-initiated connections wait after a
// transport reset for the guest to show it handled it. Linux re-adds the
// event buffer right after resetting its sockets, within milliseconds on
// hardware-assisted KVM but after up to ~2 s where ring 0 is emulated (a
// host connection let through at 250 ms was reset with the old ones there);
// a guest that never re-adds it delays only its first host connections
// after a restore, by this much.
const resetAckTimeout = 5 * time.Second

// sendTransportReset puts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event
// queue, or leaves it owed until the guest gives an event buffer.
//
// The guest handles the event and its rx packets in separate work items
// that may run in either order; a host REQUEST it handled before the reset
// would be reset with the old connections. So the device takes every event
// buffer the guest has posted (the reset uses one), asks to be notified of
// the next, and holds host-initiated REQUESTs until the guest posts a new
// event buffer, which Linux does right after handling the event
// (virtio_transport_event_work), or until resetAckTimeout.
func (d *Device) sendTransportReset(q *virtio.Queue) error {
	for {
		c, err := q.Pop()
		if err != nil {
			return err
		}
		if c == nil {
			break
		}
		d.evHeld = append(d.evHeld, c)
	}
	sent := false
	held := d.evHeld[:0]
	for _, c := range d.evHeld {
		if sent || c.WritableLen() < eventSize {
			held = append(held, c)
			continue
		}
		var ev [eventSize]byte
		binary.LittleEndian.PutUint32(ev[:], EventTransportReset)
		sg, err := d.slices(c.Writable(), d.sg)
		d.sg = sg
		if err != nil {
			return err
		}
		sg.scatter(ev[:])
		d.markDirty(c.Writable(), eventSize)
		if err := q.PushUsed(c.Head, eventSize); err != nil {
			return err
		}
		sent = true
	}
	d.evHeld = held
	if !sent {
		// No usable buffer yet: hear of the next one.
		more, err := q.EnableNotification()
		if err != nil {
			return err
		}
		if more {
			return d.sendTransportReset(q)
		}
		return nil
	}
	d.log.Debug("vsock: sent transport reset")
	d.resetOwed = false
	d.resetPending = true
	d.resetUntil = time.Now().Add(resetAckTimeout)
	d.mux.holdRequests(true)
	if _, err := q.EnableNotification(); err != nil {
		return err
	}
	return q.SignalUsed()
}

// checkResetHandled ends the reset handshake when the guest posts a new
// event buffer or the wait times out, and lets held REQUESTs go.
func (d *Device) checkResetHandled(q *virtio.Queue) error {
	c, err := q.Pop()
	if err != nil {
		return err
	}
	if c != nil {
		d.evHeld = append(d.evHeld, c)
	} else if time.Now().Before(d.resetUntil) {
		_, err := q.EnableNotification()
		return err
	} else {
		d.log.Debug("vsock: guest did not re-post an event buffer after the transport reset; going on")
	}
	d.resetPending = false
	d.mux.holdRequests(false)
	return d.releaseEventBuffers()
}

// releaseEventBuffers returns held event buffers to the guest, empty.
func (d *Device) releaseEventBuffers() error {
	if len(d.evHeld) == 0 {
		return nil
	}
	q := d.act.Queues[evQueue]
	for _, c := range d.evHeld {
		if err := q.PushUsed(c.Head, 0); err != nil {
			d.evHeld = nil
			return err
		}
	}
	d.evHeld = d.evHeld[:0]
	return q.SignalUsed()
}
