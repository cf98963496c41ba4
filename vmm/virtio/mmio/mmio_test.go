package mmio_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

const (
	memSize = 4 << 20
	// Register offsets, spelled out here as the Linux driver does
	// (include/uapi/linux/virtio_mmio.h), independently of the package.
	magic, version, deviceID, vendorID = 0x000, 0x004, 0x008, 0x00c
	devFeatures, devFeaturesSel        = 0x010, 0x014
	drvFeatures, drvFeaturesSel        = 0x020, 0x024
	queueSel, queueNumMax, queueNum    = 0x030, 0x034, 0x038
	queueReady, queueNotify            = 0x044, 0x050
	intStatus, intACK, status          = 0x060, 0x064, 0x070
	descLow, descHigh                  = 0x080, 0x084
	availLow, availHigh                = 0x090, 0x094
	usedLow, usedHigh                  = 0x0a0, 0x0a4
	shmSel, shmLenLow, shmLenHigh      = 0x0ac, 0x0b0, 0x0b4
	configGeneration, config           = 0x0fc, 0x100
	ack, driver, driverOK, featuresOK  = 1, 2, 4, 8
	needsReset, failed                 = 64, 128
)

// echoDevice is a two-queue test device: it copies each chain's readable
// part into its writable part. Its config space is 8 bytes, writable.
type echoDevice struct {
	mu        sync.Mutex
	config    [8]byte
	features  uint64
	act       virtio.Activation
	activated int
	resets    int
	runs      int
	failNext  error // returned by the next Run
}

func (d *echoDevice) Type() virtio.DeviceType { return 42 }
func (d *echoDevice) Features() uint64        { return d.features }
func (d *echoDevice) QueueMaxSizes() []uint16 { return []uint16{16, 8} }
func (d *echoDevice) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		if int(off)+i < len(d.config) {
			data[i] = d.config[int(off)+i]
		}
	}
}
func (d *echoDevice) WriteConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		if int(off)+i < len(d.config) {
			d.config[int(off)+i] = data[i]
		}
	}
}
func (d *echoDevice) Activate(a virtio.Activation) error {
	d.act = a
	d.activated++
	return nil
}
func (d *echoDevice) Reset() { d.resets++; d.act = virtio.Activation{} }
func (d *echoDevice) Run(ctx context.Context) error {
	d.runs++
	if err := d.failNext; err != nil {
		d.failNext = nil
		return err
	}
	for {
		for _, q := range d.act.Queues {
			for {
				c, err := q.Pop()
				if err != nil {
					return err
				}
				if c == nil {
					break
				}
				buf := make([]byte, c.ReadableLen())
				c.Reader().Read(buf)
				w := c.Writer()
				w.Write(buf)
				if err := q.PushUsed(c.Head, w.Written()); err != nil {
					return err
				}
			}
			if err := q.SignalUsed(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.act.Notify[0]:
		case <-d.act.Notify[1]:
		}
	}
}

// syncBuffer is a bytes.Buffer for a logger written by the worker.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type bench struct {
	t     testing.TB
	mem   *memory.Memory
	dev   *echoDevice
	tr    *mmio.Transport
	irq   *virtiotest.Trigger
	rings []*virtiotest.Ring
}

func newBench(t testing.TB) *bench {
	t.Helper()
	mem, err := virtiotest.NewMemory(memSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	b := &bench{t: t, mem: mem, dev: &echoDevice{features: virtio.QueueFeatures | 1<<3}, irq: virtiotest.NewTrigger()}
	b.tr, err = mmio.New(b.dev, mmio.Config{Name: "echo0", Memory: mem, IRQ: b.irq})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.tr.Close() })
	return b
}

func (b *bench) read(off uint64) uint32 {
	var d [4]byte
	b.tr.Read(off, d[:])
	return binary.LittleEndian.Uint32(d[:])
}

func (b *bench) write(off uint64, v uint32) {
	var d [4]byte
	binary.LittleEndian.PutUint32(d[:], v)
	b.tr.Write(off, d[:])
}

func (b *bench) addStatus(s uint32) { b.write(status, b.read(status)|s) }

// probe is what virtio_mmio_probe and virtio_dev_probe do, in order, up to
// and including FEATURES_OK. It returns whether the device kept FEATURES_OK.
func (b *bench) probe(accept uint64) bool {
	t := b.t
	if b.read(magic) != 0x74726976 || b.read(version) != 2 || b.read(deviceID) != 42 {
		t.Fatalf("identification: magic %#x version %d device %d", b.read(magic), b.read(version), b.read(deviceID))
	}
	b.write(status, 0) // reset
	b.addStatus(ack)
	b.addStatus(driver)
	b.write(devFeaturesSel, 1)
	offered := uint64(b.read(devFeatures)) << 32
	b.write(devFeaturesSel, 0)
	offered |= uint64(b.read(devFeatures))
	if offered != b.dev.features {
		t.Fatalf("device features %#x, want %#x", offered, b.dev.features)
	}
	accepted := offered & accept
	b.write(drvFeaturesSel, 1)
	b.write(drvFeatures, uint32(accepted>>32))
	b.write(drvFeaturesSel, 0)
	b.write(drvFeatures, uint32(accepted))
	b.addStatus(featuresOK)
	return b.read(status)&featuresOK != 0
}

// setupQueues is vm_setup_vq for every queue, then DRIVER_OK.
func (b *bench) setupQueues() {
	t := b.t
	for i, base := range []memory.GuestAddr{0x10000, 0x20000} {
		b.write(queueSel, uint32(i))
		if b.read(queueReady) != 0 {
			t.Fatalf("queue %d already ready", i)
		}
		max := b.read(queueNumMax)
		if max == 0 {
			t.Fatalf("queue %d not available", i)
		}
		r, err := virtiotest.NewRing(b.mem, base, uint16(max), memory.GuestAddr(0x100000+0x80000*i), memory.GuestAddr(0x180000+0x80000*i))
		if err != nil {
			t.Fatal(err)
		}
		b.rings = append(b.rings, r)
		b.write(queueNum, max)
		b.write(descLow, uint32(r.Desc))
		b.write(descHigh, uint32(uint64(r.Desc)>>32))
		b.write(availLow, uint32(r.Avail))
		b.write(availHigh, 0)
		b.write(usedLow, uint32(r.Used))
		b.write(usedHigh, 0)
		b.write(queueReady, 1)
		if b.read(queueReady) != 1 {
			t.Fatalf("queue %d: QueueReady reads %d after writing 1", i, b.read(queueReady))
		}
	}
	b.write(queueSel, 2)
	if b.read(queueNumMax) != 0 {
		t.Fatal("queue 2 reported available")
	}
	b.addStatus(driverOK)
}

// request adds a chain to queue qi, notifies, waits for the interrupt and
// handles it as vm_interrupt does; it returns the used entry.
func (b *bench) request(qi int, payload string) virtiotest.Used {
	t := b.t
	r := b.rings[qi]
	if _, err := r.Add(virtiotest.Segments{Readable: [][]byte{[]byte(payload)}, Writable: []uint32{uint32(len(payload))}}); err != nil {
		t.Fatal(err)
	}
	b.write(queueNotify, uint32(qi))
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-b.irq.C:
		case <-deadline:
			t.Fatalf("no interrupt for queue %d (status %#x)", qi, b.read(status))
		}
		st := b.read(intStatus)
		b.write(intACK, st)
		if st&1 == 0 {
			continue
		}
		if u, ok, err := r.PopUsed(); err != nil {
			t.Fatal(err)
		} else if ok {
			return u
		}
	}
}

func TestLinuxNegotiationAndRequests(t *testing.T) {
	b := newBench(t)
	if !b.probe(^uint64(0)) {
		t.Fatal("FEATURES_OK refused for the offered features")
	}
	if b.read(vendorID) == 0 {
		t.Error("vendor ID 0")
	}
	// Config space: readable before DRIVER_OK, by bytes and words.
	b.write(config, 0x04030201)
	var w [2]byte
	b.tr.Read(config+1, w[:])
	if binary.LittleEndian.Uint16(w[:]) != 0x0302 {
		t.Fatalf("config word at 1 = %#x", binary.LittleEndian.Uint16(w[:]))
	}
	gen := b.read(configGeneration)
	b.setupQueues()
	if b.read(status) != ack|driver|featuresOK|driverOK {
		t.Fatalf("status %#x after DRIVER_OK", b.read(status))
	}
	if b.dev.activated != 1 || b.dev.act.Features != b.dev.features {
		t.Fatalf("activated %d times with features %#x", b.dev.activated, b.dev.act.Features)
	}
	for i := 0; i < 20; i++ {
		qi := i % 2
		u := b.request(qi, "ping")
		if u.Len != 4 || string(u.Data) != "ping" {
			t.Fatalf("request %d on queue %d: used %+v", i, qi, u)
		}
	}
	if b.read(configGeneration) != gen {
		t.Error("config generation moved without a change")
	}
	if err := b.dev.act.Interrupt.ConfigChanged(); err != nil {
		t.Fatal(err)
	}
	if b.read(configGeneration) == gen || b.read(intStatus)&2 == 0 {
		t.Fatalf("ConfigChanged: generation %d (was %d), interrupt status %#x", b.read(configGeneration), gen, b.read(intStatus))
	}
	b.write(intACK, 2)
	if b.read(intStatus) != 0 {
		t.Fatalf("interrupt status %#x after ACK", b.read(intStatus))
	}
	// No shared memory regions.
	b.write(shmSel, 0)
	if b.read(shmLenLow) != 0xffffffff || b.read(shmLenHigh) != 0xffffffff {
		t.Error("shared memory length not -1")
	}

	// Reset: worker stopped, device and queues reset, status 0.
	b.write(status, 0)
	if b.read(status) != 0 || b.dev.resets < 2 || b.read(intStatus) != 0 {
		t.Fatalf("after reset: status %#x, resets %d, interrupt status %#x", b.read(status), b.dev.resets, b.read(intStatus))
	}
	for i := 0; i < 2; i++ {
		b.write(queueSel, uint32(i))
		if b.read(queueReady) != 0 {
			t.Fatalf("queue %d ready after reset", i)
		}
	}
	// The driver can bring the device up again (re-probe).
	b.rings = nil
	if !b.probe(^uint64(0)) {
		t.Fatal("FEATURES_OK refused after reset")
	}
	b.setupQueues()
	if u := b.request(1, "again"); string(u.Data) != "again" {
		t.Fatalf("after re-init: %+v", u)
	}
}

func TestFeatureNegotiationRefusals(t *testing.T) {
	tests := []struct {
		name   string
		accept uint64 // written as the driver's features
		ok     bool
	}{
		{"everything offered", virtio.QueueFeatures | 1<<3, true},
		{"a subset with VERSION_1", virtio.FeatureVersion1, true},
		{"without VERSION_1", virtio.FeatureEventIdx | 1<<3, false},
		{"a feature not offered", virtio.QueueFeatures | 1<<4, false},
		{"packed ring, not offered", virtio.FeatureVersion1 | virtio.FeatureRingPacked, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBench(t)
			b.write(status, 0)
			b.addStatus(ack)
			b.addStatus(driver)
			b.write(drvFeaturesSel, 1)
			b.write(drvFeatures, uint32(tt.accept>>32))
			b.write(drvFeaturesSel, 0)
			b.write(drvFeatures, uint32(tt.accept))
			b.addStatus(featuresOK)
			if got := b.read(status)&featuresOK != 0; got != tt.ok {
				t.Fatalf("FEATURES_OK kept = %v, want %v", got, tt.ok)
			}
			// Features cannot change after FEATURES_OK: a later write is
			// ignored.
			if tt.ok {
				b.write(drvFeatures, 0)
				b.write(queueSel, 0)
				b.write(queueNum, 16)
				b.addStatus(driverOK)
				if b.dev.act.Features != tt.accept {
					t.Fatalf("negotiated %#x, want %#x", b.dev.act.Features, tt.accept)
				}
			}
		})
	}
}

func TestStatusOrderingAndIgnoredWrites(t *testing.T) {
	b := newBench(t)
	b.write(status, driverOK) // DRIVER_OK first: ignored
	if b.read(status) != 0 || b.dev.activated != 0 {
		t.Fatalf("DRIVER_OK accepted out of order: status %#x", b.read(status))
	}
	b.write(status, ack|driver)
	if b.read(status) != ack|driver {
		t.Fatalf("ACK|DRIVER in one write: status %#x", b.read(status))
	}
	// Queue registers before FEATURES_OK are ignored.
	b.write(queueSel, 0)
	b.write(queueNum, 4)
	b.write(queueReady, 1)
	if b.read(queueReady) != 0 {
		t.Fatal("QueueReady accepted before FEATURES_OK")
	}
	b.write(status, ack) // clearing a bit: ignored
	if b.read(status) != ack|driver {
		t.Fatalf("status bit cleared: %#x", b.read(status))
	}
	// Narrow accesses to registers read zero and write nothing.
	var one [1]byte
	b.tr.Read(magic, one[:])
	if one[0] != 0 {
		t.Fatal("byte read of a register returned data")
	}
	b.tr.Write(status, []byte{0})
	if b.read(status) != ack|driver {
		t.Fatal("byte write to Status took effect")
	}
	// Config space past the window is dropped, not a panic.
	var eight [8]byte
	b.tr.Read(mmio.Size-4, eight[:])
	b.tr.Write(mmio.Size-4, eight[:])
	b.write(status, b.read(status)|failed)
	if b.read(status)&failed == 0 {
		t.Fatal("FAILED not recorded")
	}
}

// An invalid queue configuration at DRIVER_OK breaks the device instead of
// activating it.
func TestActivationWithBadQueueNeedsReset(t *testing.T) {
	b := newBench(t)
	if !b.probe(^uint64(0)) {
		t.Fatal("negotiation failed")
	}
	b.write(queueSel, 0)
	b.write(queueNum, 12) // not a power of two
	b.write(descLow, 0x10000)
	b.write(availLow, 0x11000)
	b.write(usedLow, 0x12000)
	b.write(queueReady, 1)
	b.addStatus(driverOK)
	if b.read(status)&needsReset == 0 || b.dev.activated != 0 {
		t.Fatalf("status %#x, activated %d", b.read(status), b.dev.activated)
	}
	if b.read(intStatus)&2 == 0 {
		t.Fatal("no configuration change interrupt for DEVICE_NEEDS_RESET")
	}
	if err := b.tr.Err(); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Fatalf("Err() = %v", err)
	}
	b.write(status, 0)
	if b.read(status) != 0 || b.tr.Err() != nil {
		t.Fatal("reset did not clear DEVICE_NEEDS_RESET")
	}
}

// A malformed chain makes Run fail: the transport marks the device broken
// and keeps serving register accesses.
func TestMalformedChainBreaksDevice(t *testing.T) {
	b := newBench(t)
	var logged syncBuffer
	tr, err := mmio.New(b.dev, mmio.Config{Name: "echo0", Memory: b.mem, IRQ: b.irq, Log: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	b.tr.Close()
	b.tr = tr
	defer tr.Close()
	b.probe(^uint64(0))
	b.setupQueues()
	r := b.rings[0]
	r.WriteDesc(r.Desc, 0, 0x10, 16, virtiotest.FlagNext, 0) // self loop
	r.PublishHead(0)
	b.write(queueNotify, 0)
	deadline := time.Now().Add(10 * time.Second)
	for b.read(status)&needsReset == 0 {
		if time.Now().After(deadline) {
			t.Fatal("device not marked DEVICE_NEEDS_RESET")
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(b.tr.Err(), virtio.ErrInvalidChain) {
		t.Fatalf("Err() = %v", b.tr.Err())
	}
	if l := logged.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "device broken") || !strings.Contains(l, "device=echo0") || !strings.Contains(l, "longer than 16 descriptors") {
		t.Fatalf("log does not report the broken device: %q", l)
	}
	// Notifications to a broken device do nothing; reset recovers.
	b.write(queueNotify, 1)
	b.write(status, 0)
	b.rings = nil
	b.probe(^uint64(0))
	b.setupQueues()
	if u := b.request(0, "ok"); string(u.Data) != "ok" {
		t.Fatalf("after recovery: %+v", u)
	}
}

func TestQueueReadyZeroStopsTheQueue(t *testing.T) {
	b := newBench(t)
	b.probe(^uint64(0))
	b.setupQueues()
	b.request(0, "x")
	b.write(queueSel, 0)
	b.write(queueReady, 0)
	if b.read(queueReady) != 0 {
		t.Fatal("QueueReady still 1")
	}
	// Queue 1 keeps working; queue 0's new buffers are left alone.
	b.rings[0].Add(virtiotest.Segments{Readable: [][]byte{[]byte("y")}, Writable: []uint32{1}})
	b.write(queueNotify, 0)
	if u := b.request(1, "z"); string(u.Data) != "z" {
		t.Fatalf("queue 1: %+v", u)
	}
	if _, ok, _ := b.rings[0].PopUsed(); ok {
		t.Fatal("device used a buffer of a disabled queue")
	}
}

func TestPauseStateRestore(t *testing.T) {
	b := newBench(t)
	b.probe(^uint64(0))
	b.setupQueues()
	for i := 0; i < 5; i++ {
		b.request(i%2, "abc")
	}
	if _, err := b.tr.State(); !errors.Is(err, mmio.ErrRunning) {
		t.Fatalf("State while running: %v", err)
	}
	b.tr.Pause()
	st, err := b.tr.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != ack|driver|featuresOK|driverOK || len(st.Queues) != 2 || st.Queues[0].NextUsed != 3 || st.Queues[1].NextUsed != 2 {
		t.Fatalf("state %+v", st)
	}
	// A paused device leaves new buffers alone...
	b.rings[0].Add(virtiotest.Segments{Readable: [][]byte{[]byte("p")}, Writable: []uint32{1}})
	b.write(queueNotify, 0)
	time.Sleep(20 * time.Millisecond)
	if _, ok, _ := b.rings[0].PopUsed(); ok {
		t.Fatal("paused device used a buffer")
	}

	// ...and a new transport restored from the state serves it on Resume,
	// the way a restored VM continues.
	dev2 := &echoDevice{features: b.dev.features}
	irq2 := virtiotest.NewTrigger()
	tr2, err := mmio.New(dev2, mmio.Config{Name: "echo1", Memory: b.mem, IRQ: irq2})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	if err := tr2.Restore(st); err != nil {
		t.Fatal(err)
	}
	if dev2.activated != 1 || dev2.runs != 0 {
		t.Fatalf("restored: activated %d runs %d", dev2.activated, dev2.runs)
	}
	st2, _ := tr2.State()
	if len(st2.Queues) != 2 || st2.Queues[0] != st.Queues[0] || st2.Status != st.Status {
		t.Fatalf("restored state differs:\n%+v\n%+v", st2, st)
	}
	b.tr.Close()
	b.tr, b.irq = tr2, irq2
	tr2.Resume()
	deadline := time.After(10 * time.Second)
	for {
		if u, ok, _ := b.rings[0].PopUsed(); ok {
			if string(u.Data) != "p" {
				t.Fatalf("restored device used %+v", u)
			}
			break
		}
		select {
		case <-irq2.C:
		case <-deadline:
			t.Fatal("restored device did not serve the pending buffer")
		}
	}
	if err := tr2.Restore(st); err == nil {
		t.Fatal("Restore into a used transport succeeded")
	}
}

func TestRestoreRejectsBadState(t *testing.T) {
	b := newBench(t)
	b.probe(^uint64(0))
	b.setupQueues()
	b.request(0, "a")
	b.tr.Pause()
	good, _ := b.tr.State()
	tests := []struct {
		name   string
		mutate func(*mmio.State)
		want   string
	}{
		{"unknown status bit", func(s *mmio.State) { s.Status |= 16 }, "unknown status"},
		{"DRIVER_OK without FEATURES_OK", func(s *mmio.State) { s.Status &^= featuresOK }, "without"},
		{"features not offered", func(s *mmio.State) { s.DriverFeatures |= 1 << 20 }, "does not offer"},
		{"no VERSION_1", func(s *mmio.State) { s.DriverFeatures &^= virtio.FeatureVersion1 }, "VERSION_1"},
		{"queue count", func(s *mmio.State) { s.Queues = s.Queues[:1] }, "has 1 queues"},
		{"interrupt bits", func(s *mmio.State) { s.InterruptStatus = 4 }, "interrupt status"},
		{"inactive queue with DRIVER_OK", func(s *mmio.State) { s.Queues[1].Active = false }, "active=false"},
		{"queue outside RAM", func(s *mmio.State) { s.Queues[0].DescTable = memSize }, "descriptor table"},
	}
	for _, tt := range tests {
		st := good
		st.Queues = append([]virtio.QueueState(nil), good.Queues...)
		tt.mutate(&st)
		tr, err := mmio.New(&echoDevice{features: b.dev.features}, mmio.Config{Memory: b.mem, IRQ: virtiotest.NewTrigger()})
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Restore(st); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Restore = %v, want %q", tt.name, err, tt.want)
		}
		tr.Close()
	}
}

func TestNewRejectsBadDevices(t *testing.T) {
	mem, _ := virtiotest.NewMemory(1 << 20)
	defer mem.Close()
	if _, err := mmio.New(&echoDevice{features: virtio.FeatureIndirectDesc}, mmio.Config{Memory: mem, IRQ: virtiotest.NewTrigger()}); err == nil {
		t.Error("device without VERSION_1 accepted")
	}
	if _, err := mmio.New(&echoDevice{features: virtio.QueueFeatures}, mmio.Config{Memory: mem}); err == nil {
		t.Error("transport without an interrupt accepted")
	}
}

func TestKernelParam(t *testing.T) {
	if got, want := mmio.KernelParam(0xd0000000, 5), "virtio_mmio.device=4K@0xd0000000:5"; got != want {
		t.Fatalf("KernelParam = %q, want %q", got, want)
	}
}

// Notifications through eventfds (what KVM's ioeventfd signals) reach the
// device the same way QueueNotify writes do.
func TestEventFDNotifications(t *testing.T) {
	b := newBench(t)
	b.probe(^uint64(0))
	b.setupQueues()
	efds, err := b.tr.NotifyEventFDs()
	if err != nil || len(efds) != 2 {
		t.Fatalf("NotifyEventFDs = %d, %v", len(efds), err)
	}
	for i := 0; i < 10; i++ {
		qi := i % 2
		b.rings[qi].Add(virtiotest.Segments{Readable: [][]byte{[]byte("e")}, Writable: []uint32{1}})
		if err := efds[qi].Signal(); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(10 * time.Second)
		for done := false; !done; {
			select {
			case <-b.irq.C:
			case <-deadline:
				t.Fatalf("no interrupt after eventfd signal %d", i)
			}
			b.write(intACK, b.read(intStatus))
			_, done, _ = b.rings[qi].PopUsed()
		}
	}
}

// A worker whose set-up fails (the VMM could not confine its thread) never
// runs the device: the transport marks it broken instead.
func TestFailedWorkerSetupBreaksDevice(t *testing.T) {
	b := newBench(t)
	tr, err := mmio.New(b.dev, mmio.Config{Name: "echo0", Memory: b.mem, IRQ: b.irq,
		WorkerSetup: func() error { return errors.New("no filter for this thread") }})
	if err != nil {
		t.Fatal(err)
	}
	b.tr.Close()
	b.tr = tr
	defer tr.Close()
	b.probe(^uint64(0))
	b.setupQueues()
	deadline := time.Now().Add(10 * time.Second)
	for b.read(status)&needsReset == 0 {
		if time.Now().After(deadline) {
			t.Fatal("device not marked DEVICE_NEEDS_RESET")
		}
		time.Sleep(time.Millisecond)
	}
	if err := b.tr.Err(); err == nil || !strings.Contains(err.Error(), "no filter for this thread") {
		t.Fatalf("Err() = %v", err)
	}
	if b.dev.runs != 0 {
		t.Fatalf("the device ran %d times", b.dev.runs)
	}
}
