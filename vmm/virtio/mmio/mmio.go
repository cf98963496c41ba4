// Package mmio is the virtio-mmio transport, version 2 (virtio 1.2 §4.2): a
// page of 32-bit registers through which the driver negotiates features,
// configures the queues and resets the device, followed by the device's
// configuration space at 0x100. A Transport is a bus.Device; it owns the
// queues' configuration, the device's worker goroutine and its interrupt.
//
// Notifications from the driver arrive either as QueueNotify writes (an MMIO
// exit handled on the vCPU thread) or, once NotifyEventFDs has been called
// and the eventfds registered with KVM_IOEVENTFD, without leaving the guest;
// both end on the same per-queue channel the device's worker selects on.
// Interrupts go through an irqfd eventfd bound to the device's GSI, or any
// Trigger (tests, KVM_IRQ_LINE).
package mmio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/voltvmm/volt/vmm/devices/bus"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
)

// Trigger raises the device's interrupt line: an irqfd *virtio.EventFD, a
// KVM_IRQ_LINE pulse, or a counter in tests.
type Trigger interface {
	Trigger() error
}

// Config describes a transport.
type Config struct {
	// Name identifies the device in logs ("virtio-blk0").
	Name string
	// Memory is guest RAM, which the queues live in.
	Memory virtio.Memory
	// IRQ raises the interrupt. AttachKVM replaces it with an irqfd.
	IRQ Trigger
	// Log receives the transport's and the device's log lines; nil means
	// slog.Default().
	Log *slog.Logger
	// WorkerSetup, if set, runs first on every worker goroutine, before the
	// device's Run: the VMM confines the worker's thread there. An error
	// marks the device broken instead of running it.
	WorkerSetup func() error
}

// Transport is one virtio-mmio device.
type Transport struct {
	name     string
	dev      virtio.Device
	mem      virtio.Memory
	log      *slog.Logger
	offered  uint64
	maxSizes []uint16
	intr     interrupt
	// workerSetup is Config.WorkerSetup.
	workerSetup func() error

	// mu serialises register accesses (vCPU threads) and the worker's life
	// cycle (start, stop, pause). The worker itself never takes it: it only
	// touches the atomics below, so stopping it while holding mu cannot
	// deadlock.
	mu                sync.Mutex
	deviceFeaturesSel uint32
	driverFeaturesSel uint32
	driverFeatures    uint64
	queueSel          uint32
	shmSel            uint32
	queues            []*virtio.Queue
	activated         bool // the device accepted Activate
	paused            bool
	worker            *worker
	closed            bool

	// status is the driver-visible status without DEVICE_NEEDS_RESET,
	// which is needsReset. Written under mu, read anywhere.
	status     atomic.Uint32
	needsReset atomic.Bool
	intStatus  atomic.Uint32
	configGen  atomic.Uint32
	irq        atomic.Pointer[Trigger]
	brokenErr  atomic.Pointer[error]

	notify   []chan struct{}
	notifyRO []<-chan struct{}
	// eventfds are the ioeventfds of NotifyEventFDs, one per queue, and
	// forwarders the goroutines moving their signals to notify.
	eventfds   []*virtio.EventFD
	forwarders sync.WaitGroup
}

var _ bus.Device = (*Transport)(nil)

type worker struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// New wraps dev in a transport. It checks the device's description: a
// device that does not offer VIRTIO_F_VERSION_1 or has queues of invalid
// sizes is a programming error reported here.
func New(dev virtio.Device, cfg Config) (*Transport, error) {
	if cfg.Memory == nil {
		return nil, errors.New("virtio-mmio: no guest memory")
	}
	if cfg.IRQ == nil {
		return nil, errors.New("virtio-mmio: no interrupt trigger")
	}
	if cfg.Name == "" {
		cfg.Name = "virtio-" + dev.Type().String()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	offered := dev.Features()
	if offered&virtio.FeatureVersion1 == 0 {
		return nil, fmt.Errorf("%s: device does not offer VIRTIO_F_VERSION_1, which virtio-mmio version 2 requires", cfg.Name)
	}
	sizes := append([]uint16(nil), dev.QueueMaxSizes()...)
	for i, s := range sizes {
		if s == 0 || s > virtio.MaxQueueSize || s&(s-1) != 0 {
			return nil, fmt.Errorf("%s: queue %d maximum size %d is not a power of two in [1, %d]", cfg.Name, i, s, virtio.MaxQueueSize)
		}
	}
	t := &Transport{
		name:     cfg.Name,
		dev:      dev,
		mem:      cfg.Memory,
		log:      cfg.Log.With("device", cfg.Name),
		offered:  offered,
		maxSizes: sizes,

		workerSetup: cfg.WorkerSetup,
	}
	t.intr = interrupt{t}
	t.irq.Store(&cfg.IRQ)
	for i, s := range sizes {
		t.queues = append(t.queues, virtio.NewQueue(i, s))
		ch := make(chan struct{}, 1)
		t.notify = append(t.notify, ch)
		t.notifyRO = append(t.notifyRO, ch)
	}
	return t, nil
}

// Name is the device's name in logs.
func (t *Transport) Name() string { return t.name }

// Device returns the wrapped device.
func (t *Transport) Device() virtio.Device { return t.dev }

// Err returns the error that broke the device (DEVICE_NEEDS_RESET), or nil.
func (t *Transport) Err() error {
	if p := t.brokenErr.Load(); p != nil {
		return *p
	}
	return nil
}

// SetIRQ replaces the interrupt trigger (AttachKVM's irqfd). Call it before
// the guest runs.
func (t *Transport) SetIRQ(irq Trigger) { t.irq.Store(&irq) }

// interrupt is the virtio.Interrupt the device and its queues use.
type interrupt struct{ t *Transport }

func (i interrupt) UsedBuffer() error { return i.t.raise(virtio.InterruptUsedBuffer) }

func (i interrupt) ConfigChanged() error {
	// The driver re-reads the configuration if the generation moved
	// (§4.2.2 ConfigGeneration), so bump it before the interrupt.
	i.t.configGen.Add(1)
	return i.t.raise(virtio.InterruptConfigChange)
}

// raise sets InterruptStatus bits before triggering, so that the driver's
// handler, which reads InterruptStatus first, sees why it was called. It
// triggers every time, not only on a 0→1 change: an edge lost while the
// guest had the line masked is then repaired by the next event.
func (t *Transport) raise(bits uint32) error {
	t.intStatus.Or(bits)
	if err := (*t.irq.Load()).Trigger(); err != nil {
		return fmt.Errorf("%s: raise interrupt: %w", t.name, err)
	}
	return nil
}

// Read handles a guest read at offset within the device's window.
func (t *Transport) Read(offset uint64, data []byte) {
	clear(data)
	if offset >= regConfig {
		if offset+uint64(len(data)) <= Size {
			t.dev.ReadConfig(offset-regConfig, data)
		}
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		// §4.2.2: the driver uses only aligned 32-bit accesses to the
		// control registers; anything else reads as zero.
		return
	}
	binary.LittleEndian.PutUint32(data, t.readReg(offset))
}

func (t *Transport) readReg(offset uint64) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch offset {
	case regMagicValue:
		return MagicValue
	case regVersion:
		return Version
	case regDeviceID:
		return uint32(t.dev.Type())
	case regVendorID:
		return VendorID
	case regDeviceFeatures:
		if t.deviceFeaturesSel > 1 {
			return 0
		}
		return uint32(t.offered >> (32 * t.deviceFeaturesSel))
	case regQueueNumMax:
		if q := t.selected(); q != nil {
			return uint32(q.MaxSize())
		}
		return 0 // "the queue is not available"
	case regQueueReady:
		if q := t.selected(); q != nil && q.Ready() {
			return 1
		}
		return 0
	case regInterruptStatus:
		return t.intStatus.Load()
	case regStatus:
		return t.currentStatus()
	case regSHMLenLow, regSHMLenHigh, regSHMBaseLow, regSHMBaseHigh:
		// No shared memory regions: length -1, base all ones (§4.2.2).
		return 0xffff_ffff
	case regConfigGeneration:
		return t.configGen.Load()
	}
	// Write-only registers, QueueReset (VIRTIO_F_RING_RESET is not
	// offered) and holes read as zero.
	return 0
}

func (t *Transport) currentStatus() uint32 {
	s := t.status.Load()
	if t.needsReset.Load() {
		s |= virtio.StatusDeviceNeedsReset
	}
	return s
}

// selected is the queue QueueSel names, nil if there is none. Precondition:
// mu held.
func (t *Transport) selected() *virtio.Queue {
	if int64(t.queueSel) >= int64(len(t.queues)) {
		return nil
	}
	return t.queues[t.queueSel]
}

// Write handles a guest write at offset within the device's window.
func (t *Transport) Write(offset uint64, data []byte) {
	if offset >= regConfig {
		if offset+uint64(len(data)) > Size {
			return
		}
		// Configuration writes are meaningful only once a driver owns the
		// device (DRIVER set) and before it gave up (FAILED).
		if s := t.status.Load(); s&virtio.StatusDriver != 0 && s&virtio.StatusFailed == 0 {
			t.dev.WriteConfig(offset-regConfig, data)
		}
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	if offset == regQueueNotify {
		// The hot path without an ioeventfd: no lock, just wake the
		// worker. The value is the queue index (no
		// VIRTIO_F_NOTIFICATION_DATA).
		t.Notify(int(v & 0xffff))
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writeReg(offset, v)
}

// Notify delivers a driver notification for queue index, as a QueueNotify
// write or an ioeventfd does.
func (t *Transport) Notify(index int) {
	if index < 0 || index >= len(t.notify) {
		return
	}
	select {
	case t.notify[index] <- struct{}{}:
	default: // a notification is already pending; they coalesce
	}
}

// Precondition: mu held.
func (t *Transport) writeReg(offset uint64, v uint32) {
	status := t.status.Load()
	switch offset {
	case regDeviceFeaturesSel:
		t.deviceFeaturesSel = v
	case regDriverFeaturesSel:
		t.driverFeaturesSel = v
	case regDriverFeatures:
		// Features are written after DRIVER and before FEATURES_OK (§3.1.1).
		if status&virtio.StatusDriver == 0 || status&(virtio.StatusFeaturesOK|virtio.StatusFailed) != 0 {
			t.log.Debug("virtio-mmio: driver features written outside negotiation, ignored", "status", status)
			return
		}
		if t.driverFeaturesSel > 1 {
			return
		}
		shift := 32 * t.driverFeaturesSel
		t.driverFeatures = t.driverFeatures&^(uint64(0xffff_ffff)<<shift) | uint64(v)<<shift
	case regQueueSel:
		t.queueSel = v
	case regQueueReady:
		t.writeQueueReady(v, status)
	case regQueueNum, regQueueDescLow, regQueueDescHigh, regQueueDriverLow, regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh:
		t.writeQueueConfig(offset, v, status)
	case regInterruptACK:
		t.intStatus.And(^v)
	case regStatus:
		t.writeStatus(v)
	case regSHMSel:
		t.shmSel = v
	default:
		// Read-only registers, QueueReset and holes: writes are dropped.
	}
}

// queueConfigurable reports whether the driver may change queue
// configuration now: after feature negotiation, before the device is live
// (§4.2.3.2), and only for a queue that is not ready.
func queueConfigurable(status uint32, q *virtio.Queue) bool {
	return q != nil && !q.Ready() &&
		status&virtio.StatusFeaturesOK != 0 &&
		status&(virtio.StatusDriverOK|virtio.StatusFailed) == 0
}

// Precondition: mu held.
func (t *Transport) writeQueueConfig(offset uint64, v uint32, status uint32) {
	q := t.selected()
	if !queueConfigurable(status, q) {
		t.log.Debug("virtio-mmio: queue configuration written while not configurable, ignored", "queue", t.queueSel, "register", offset, "status", status)
		return
	}
	low := func(a memory.GuestAddr) memory.GuestAddr { return a&^0xffff_ffff | memory.GuestAddr(v) }
	high := func(a memory.GuestAddr) memory.GuestAddr { return a&0xffff_ffff | memory.GuestAddr(v)<<32 }
	switch offset {
	case regQueueNum:
		if v > 0xffff {
			v = 0 // not a valid size; Validate refuses it at activation
		}
		q.SetSize(uint16(v))
	case regQueueDescLow:
		q.SetDescTable(low(q.DescTable()))
	case regQueueDescHigh:
		q.SetDescTable(high(q.DescTable()))
	case regQueueDriverLow:
		q.SetAvailRing(low(q.AvailRing()))
	case regQueueDriverHigh:
		q.SetAvailRing(high(q.AvailRing()))
	case regQueueDeviceLow:
		q.SetUsedRing(low(q.UsedRing()))
	case regQueueDeviceHigh:
		q.SetUsedRing(high(q.UsedRing()))
	}
}

// Precondition: mu held.
func (t *Transport) writeQueueReady(v uint32, status uint32) {
	q := t.selected()
	if q == nil {
		return
	}
	if v != 0 {
		if queueConfigurable(status, q) {
			q.SetReady(true)
		}
		return
	}
	if !q.Ready() {
		return
	}
	// "To stop using the queue the driver MUST write zero (0x0) to
	// QueueReady and MUST read the value back": the device must be done
	// with the queue when the write returns, so stop the worker around it.
	running := t.worker != nil
	t.stopWorker()
	q.SetReady(false)
	if running {
		t.startWorker()
	}
}

// statusOrder is the order in which the driver sets status bits (§3.1.1):
// each needs the ones before it.
var statusOrder = []uint32{virtio.StatusAcknowledge, virtio.StatusDriver, virtio.StatusFeaturesOK, virtio.StatusDriverOK}

// Precondition: mu held.
func (t *Transport) writeStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	cur := t.status.Load()
	if v&cur != cur {
		t.log.Debug("virtio-mmio: status write clears bits, ignored", "status", cur, "written", v)
		return
	}
	next := cur
	if v&virtio.StatusFailed != 0 {
		next |= virtio.StatusFailed
	}
	for i, bit := range statusOrder {
		if v&bit == 0 || cur&bit != 0 {
			continue
		}
		if i > 0 && next&statusOrder[i-1] == 0 {
			t.log.Warn("virtio-mmio: status bit set out of order, ignored", "status", cur, "written", v)
			break
		}
		if bit == virtio.StatusFeaturesOK {
			if err := t.checkFeatures(); err != nil {
				// §2.2.2: refuse FEATURES_OK; the driver reads the status
				// back and gives up on the device.
				t.log.Warn("virtio-mmio: refusing FEATURES_OK", "err", err)
				break
			}
		}
		next |= bit
		if bit == virtio.StatusDriverOK {
			t.status.Store(next)
			if err := t.activate(); err != nil {
				t.markBroken(fmt.Errorf("activate: %w", err))
			}
			return
		}
	}
	t.status.Store(next)
}

// checkFeatures decides whether FEATURES_OK can be accepted: only features
// the device offered, and VIRTIO_F_VERSION_1, without which version 2 of
// the transport is not spoken.
func (t *Transport) checkFeatures() error {
	if extra := t.driverFeatures &^ t.offered; extra != 0 {
		return fmt.Errorf("driver accepted features %#x that were not offered (offered %#x)", extra, t.offered)
	}
	if t.driverFeatures&virtio.FeatureVersion1 == 0 {
		return fmt.Errorf("driver did not accept VIRTIO_F_VERSION_1 (features %#x)", t.driverFeatures)
	}
	return nil
}

// activate hands the queues to the device and starts its worker.
// Precondition: mu held.
func (t *Transport) activate() error {
	for _, q := range t.queues {
		if err := q.Activate(t.mem, t.driverFeatures, t.intr); err != nil {
			return err
		}
	}
	if err := t.dev.Activate(t.activation()); err != nil {
		return err
	}
	t.activated = true
	if !t.paused {
		t.startWorker()
	}
	return nil
}

func (t *Transport) activation() virtio.Activation {
	return virtio.Activation{
		Features:  t.driverFeatures,
		Memory:    t.mem,
		Queues:    t.queues,
		Notify:    t.notifyRO,
		Interrupt: t.intr,
		Log:       t.log,
	}
}

// markBroken puts the device in DEVICE_NEEDS_RESET and tells the driver
// (§2.1.2: a configuration change notification once DRIVER_OK is set). It
// runs on the worker goroutine as well as under mu, so it takes no lock.
func (t *Transport) markBroken(err error) {
	t.brokenErr.Store(&err)
	if t.needsReset.Swap(true) {
		return
	}
	t.log.Error("virtio: device broken, needs reset", "err", err)
	if t.status.Load()&virtio.StatusDriverOK != 0 {
		if ierr := t.intr.ConfigChanged(); ierr != nil {
			t.log.Error("virtio: cannot signal the broken device", "err", ierr)
		}
	}
}

// startWorker runs the device's Run on a goroutine the transport owns.
// Precondition: mu held, no worker running.
func (t *Transport) startWorker() {
	if t.worker != nil || t.needsReset.Load() || t.closed {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{cancel: cancel, done: make(chan struct{})}
	t.worker = w
	go func() {
		defer close(w.done)
		if t.workerSetup != nil {
			if err := t.workerSetup(); err != nil {
				t.markBroken(err)
				return
			}
		}
		if err := t.dev.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.markBroken(err)
		}
	}()
}

// stopWorker cancels the worker and waits for it. Precondition: mu held.
func (t *Transport) stopWorker() {
	w := t.worker
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
	t.worker = nil
}

// reset is a device reset (status 0): the worker stops, the device and
// every queue go back to their initial state, features and interrupts are
// cleared. Precondition: mu held.
func (t *Transport) reset() {
	t.stopWorker()
	t.dev.Reset()
	for _, q := range t.queues {
		q.Reset()
	}
	for _, ch := range t.notify {
		select {
		case <-ch:
		default:
		}
	}
	t.activated = false
	t.deviceFeaturesSel, t.driverFeaturesSel, t.driverFeatures = 0, 0, 0
	t.queueSel, t.shmSel = 0, 0
	t.intStatus.Store(0)
	t.status.Store(0)
	t.needsReset.Store(false)
	t.brokenErr.Store(nil)
}

// Pause stops the worker (for a snapshot, or while the VM is paused); the
// device keeps its state and Resume restarts it.
func (t *Transport) Pause() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.paused = true
	t.stopWorker()
}

// Resume restarts the worker of an activated device after Pause or
// Restore.
func (t *Transport) Resume() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.paused = false
	if t.activated {
		t.startWorker()
	}
}

// Close stops the worker and the ioeventfd forwarders and closes the
// eventfds. Unregister them from KVM first (DetachKVM) if the VM lives on.
func (t *Transport) Close() error {
	t.mu.Lock()
	t.closed = true
	t.stopWorker()
	efds := t.eventfds
	t.eventfds = nil
	t.mu.Unlock()
	var errs []error
	for _, e := range efds {
		errs = append(errs, e.Close())
	}
	t.forwarders.Wait()
	return errors.Join(errs...)
}
