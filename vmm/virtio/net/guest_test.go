package net

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
)

// This file is a simulated guest driver, shaped after Linux's
// drivers/net/virtio_net.c where the device can see it, over fake guest
// memory (memory.New, no KVM), talking to the device through the real
// virtio-mmio transport's registers:
//
//   - probe: reset, ACKNOWLEDGE, DRIVER, read the 64 feature bits, accept a
//     subset, FEATURES_OK (and read it back), set up receiveq1 and
//     transmitq1, DRIVER_OK;
//   - transmit: a chain of a readable 12-byte header descriptor and a
//     readable frame descriptor (or one descriptor for both, as Linux does
//     with any_header_sg), notify queue 1;
//   - receive: with MRG_RXBUF single writable descriptors (Linux posts
//     page-sized ones); without it one writable descriptor per frame of
//     header + 1514 bytes, or "big packets" of header + 64 KiB with
//     GUEST_TSO; notify queue 0; frames are read back from the used ring
//     with num_buffers.

// MMIO register offsets (virtio 1.2 §4.2.2).
const (
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	regQueueNotify       = 0x050
	regInterruptStatus   = 0x060
	regInterruptACK      = 0x064
	regStatus            = 0x070
	regQueueDescLow      = 0x080
	regQueueDescHigh     = 0x084
	regQueueDriverLow    = 0x090
	regQueueDriverHigh   = 0x094
	regQueueDeviceLow    = 0x0a0
	regQueueDeviceHigh   = 0x0a4
	regConfig            = 0x100
)

const (
	simMemSize  = 40 << 20
	simQueue    = 256
	simRingBase = 0x10000 // rings of queue i at simRingBase*(i+1)
	// Receive buffer and transmit slot i (by descriptor index) sit at a
	// fixed place, room for a whole 64 KiB packet each.
	simRxBase  = 0x100000
	simTxBase  = 0x1200000
	simTxSlot  = MaxPacketLen
	descFNext  = 1
	descFWrite = 2
)

// countingIRQ is the transport's interrupt line.
type countingIRQ struct {
	n  atomic.Int64
	ch chan struct{}
}

func (i *countingIRQ) Trigger() error {
	i.n.Add(1)
	select {
	case i.ch <- struct{}{}:
	default:
	}
	return nil
}

type simGuest struct {
	tb       testing.TB
	mem      *memory.Memory
	tr       *mmio.Transport
	dev      *Device
	irq      *countingIRQ
	features uint64
	rings    [2]*simRing
	// rxBufSize is what each posted receive buffer holds.
	rxBufSize uint32
}

// simRing is the driver's half of one split virtqueue.
type simRing struct {
	mem                *memory.Memory
	size               uint16
	desc, avail, used  memory.GuestAddr
	availIdx, lastUsed uint16
	free               []uint16
	// chains maps a head to its descriptors and (receive) buffer.
	chains map[uint16][]uint16
	bufOf  map[uint16]memory.GuestAddr
}

func newSimRing(mem *memory.Memory, index int, size uint16) *simRing {
	base := memory.GuestAddr(simRingBase * (index + 1))
	r := &simRing{mem: mem, size: size, desc: base,
		chains: map[uint16][]uint16{}, bufOf: map[uint16]memory.GuestAddr{}}
	r.avail = base + memory.GuestAddr(16*int(size))
	r.used = (r.avail + memory.GuestAddr(6+2*int(size)) + 3) &^ 3
	// A driver allocates its rings zeroed; stale indices from a previous
	// probe would publish stale chains.
	mem.Zero(base, uint64(r.used-base)+6+8*uint64(size))
	for i := range size {
		r.free = append(r.free, i)
	}
	return r
}

type simDesc struct {
	addr  memory.GuestAddr
	len   uint32
	write bool
}

// add publishes a chain and returns its head, or false when the table is
// full.
func (r *simRing) add(bufs []simDesc) (uint16, bool) {
	if len(bufs) > len(r.free) {
		return 0, false
	}
	ids := append([]uint16(nil), r.free[:len(bufs)]...)
	r.free = r.free[len(bufs):]
	for i, b := range bufs {
		var flags uint16
		if b.write {
			flags |= descFWrite
		}
		next := uint16(0)
		if i+1 < len(bufs) {
			flags |= descFNext
			next = ids[i+1]
		}
		d := r.desc + memory.GuestAddr(16*int(ids[i]))
		r.mem.WriteUint64(d, uint64(b.addr))
		r.mem.WriteUint32(d+8, b.len)
		r.mem.WriteUint16(d+12, flags)
		r.mem.WriteUint16(d+14, next)
	}
	head := ids[0]
	r.chains[head] = ids
	r.mem.WriteUint16(r.avail+4+memory.GuestAddr(2*int(r.availIdx%r.size)), head)
	r.availIdx++
	r.mem.WriteUint16(r.avail+2, r.availIdx)
	return head, true
}

// addIndirect publishes bufs as one indirect descriptor whose table sits
// at table, as Linux does for multi-buffer chains with INDIRECT_DESC.
func (r *simRing) addIndirect(table memory.GuestAddr, bufs []simDesc) (uint16, bool) {
	if len(r.free) == 0 {
		return 0, false
	}
	for i, b := range bufs {
		var flags uint16
		if b.write {
			flags |= descFWrite
		}
		next := uint16(0)
		if i+1 < len(bufs) {
			flags |= descFNext
			next = uint16(i + 1)
		}
		d := table + memory.GuestAddr(16*i)
		r.mem.WriteUint64(d, uint64(b.addr))
		r.mem.WriteUint32(d+8, b.len)
		r.mem.WriteUint16(d+12, flags)
		r.mem.WriteUint16(d+14, next)
	}
	head := r.free[0]
	r.free = r.free[1:]
	d := r.desc + memory.GuestAddr(16*int(head))
	r.mem.WriteUint64(d, uint64(table))
	r.mem.WriteUint32(d+8, uint32(16*len(bufs)))
	r.mem.WriteUint16(d+12, 4) // VIRTQ_DESC_F_INDIRECT
	r.mem.WriteUint16(d+14, 0)
	r.chains[head] = []uint16{head}
	r.mem.WriteUint16(r.avail+4+memory.GuestAddr(2*int(r.availIdx%r.size)), head)
	r.availIdx++
	r.mem.WriteUint16(r.avail+2, r.availIdx)
	return head, true
}

type usedEntry struct {
	head uint16
	len  uint32
}

// reap returns the chains the device used since the last call and frees
// their descriptors.
func (r *simRing) reap() []usedEntry {
	idx, _ := r.mem.ReadUint16(r.used + 2)
	var out []usedEntry
	for r.lastUsed != idx {
		e := r.used + 4 + memory.GuestAddr(8*int(r.lastUsed%r.size))
		id, _ := r.mem.ReadUint32(e)
		n, _ := r.mem.ReadUint32(e + 4)
		out = append(out, usedEntry{uint16(id), n})
		r.free = append(r.free, r.chains[uint16(id)]...)
		delete(r.chains, uint16(id))
		r.lastUsed++
	}
	r.armInterrupt()
	return out
}

// armInterrupt asks for an interrupt at the next used buffer, as Linux's
// virtqueue_enable_cb does: with VIRTIO_F_EVENT_IDX it writes used_event
// (after the available ring's entries); without it the device interrupts
// whenever VRING_AVAIL_F_NO_INTERRUPT is clear, which it always is here.
func (r *simRing) armInterrupt() {
	r.mem.WriteUint16(r.avail+4+memory.GuestAddr(2*int(r.size)), r.lastUsed)
}

// testLogger sends log lines to the test's log, shown when it fails or
// with -v.
func testLogger(tb testing.TB) *slog.Logger {
	if _, bench := tb.(*testing.B); bench {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newSimGuest(tb testing.TB, dev *Device) *simGuest {
	tb.Helper()
	mem, err := memory.New(memory.Config{Size: simMemSize})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { mem.Close() })
	irq := &countingIRQ{ch: make(chan struct{}, 1)}
	tr, err := mmio.New(dev, mmio.Config{Name: "virtio-net-test", Memory: mem, IRQ: irq, Log: testLogger(tb)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	return &simGuest{tb: tb, mem: mem, tr: tr, dev: dev, irq: irq}
}

func (g *simGuest) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	g.tr.Write(off, b[:])
}

func (g *simGuest) r32(off uint64) uint32 {
	var b [4]byte
	g.tr.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// offered reads the device's 64 feature bits.
func (g *simGuest) offered() uint64 {
	g.w32(regDeviceFeaturesSel, 0)
	lo := g.r32(regDeviceFeatures)
	g.w32(regDeviceFeaturesSel, 1)
	hi := g.r32(regDeviceFeatures)
	return uint64(hi)<<32 | uint64(lo)
}

// probe negotiates features (the device's offer masked by want) and sets
// the device up; it fails the way Linux would give up.
func (g *simGuest) probe(want uint64) error {
	g.w32(regStatus, 0)
	g.w32(regStatus, virtio.StatusAcknowledge)
	g.w32(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	acked := g.offered() & want
	return g.probeExact(acked)
}

// probeExact accepts exactly acked, as a driver that breaks the rules might.
func (g *simGuest) probeExact(acked uint64) error {
	st := uint32(virtio.StatusAcknowledge | virtio.StatusDriver)
	if g.r32(regStatus) != st {
		g.w32(regStatus, 0)
		g.w32(regStatus, virtio.StatusAcknowledge)
		g.w32(regStatus, st)
	}
	g.w32(regDriverFeaturesSel, 0)
	g.w32(regDriverFeatures, uint32(acked))
	g.w32(regDriverFeaturesSel, 1)
	g.w32(regDriverFeatures, uint32(acked>>32))
	st |= virtio.StatusFeaturesOK
	g.w32(regStatus, st)
	if g.r32(regStatus)&virtio.StatusFeaturesOK == 0 {
		return fmt.Errorf("device refused FEATURES_OK for %s", FeatureString(acked))
	}
	g.features = acked
	for i := range 2 {
		g.w32(regQueueSel, uint32(i))
		if max := g.r32(regQueueNumMax); max < simQueue {
			return fmt.Errorf("queue %d: maximum size %d", i, max)
		}
		r := newSimRing(g.mem, i, simQueue)
		g.rings[i] = r
		g.w32(regQueueNum, simQueue)
		g.w32(regQueueDescLow, uint32(r.desc))
		g.w32(regQueueDescHigh, uint32(uint64(r.desc)>>32))
		g.w32(regQueueDriverLow, uint32(r.avail))
		g.w32(regQueueDriverHigh, uint32(uint64(r.avail)>>32))
		g.w32(regQueueDeviceLow, uint32(r.used))
		g.w32(regQueueDeviceHigh, uint32(uint64(r.used)>>32))
		g.w32(regQueueReady, 1)
	}
	st |= virtio.StatusDriverOK
	g.w32(regStatus, st)
	if s := g.r32(regStatus); s&virtio.StatusDeviceNeedsReset != 0 {
		return fmt.Errorf("device needs reset after DRIVER_OK: %v", g.tr.Err())
	}
	switch {
	case acked&FeatureMrgRxbuf != 0:
		g.rxBufSize = 4096
	case acked&(FeatureGuestTSO4|FeatureGuestTSO6) != 0:
		g.rxBufSize = HeaderSize + 65550
	default:
		g.rxBufSize = HeaderSize + 1514
	}
	return nil
}

func (g *simGuest) needsReset() bool {
	return g.r32(regStatus)&virtio.StatusDeviceNeedsReset != 0
}

// config reads n bytes of the device's config space.
func (g *simGuest) config(off uint64, n int) []byte {
	out := make([]byte, n)
	g.tr.Read(regConfig+off, out)
	return out
}

func (g *simGuest) rxBufAddr(head uint16) memory.GuestAddr {
	return simRxBase + memory.GuestAddr(int(head)*int(g.rxBufSize))
}

// postRx posts n receive buffers and notifies.
func (g *simGuest) postRx(n int) {
	g.tb.Helper()
	r := g.rings[rxQueue]
	for range n {
		if len(r.free) == 0 {
			break
		}
		addr := g.rxBufAddr(r.free[0])
		if addr+memory.GuestAddr(g.rxBufSize) > simTxBase {
			g.tb.Fatalf("receive buffers overflow their area")
		}
		head, _ := r.add([]simDesc{{addr: addr, len: g.rxBufSize, write: true}})
		r.bufOf[head] = addr
	}
	g.tr.Notify(rxQueue)
}

// send queues one frame (header + frame as two descriptors, or one when
// split is false) and notifies; it returns the chain head.
func (g *simGuest) send(hdr Header, frame []byte, split bool) uint16 {
	g.tb.Helper()
	r := g.rings[txQueue]
	if len(r.free) < 2 {
		g.tb.Fatal("transmit ring full")
	}
	slot := simTxBase + memory.GuestAddr(int(r.free[0])*simTxSlot)
	var h [HeaderSize]byte
	hdr.Encode(h[:])
	g.mem.Write(slot, h[:])
	g.mem.Write(slot+HeaderSize, frame)
	var bufs []simDesc
	if split {
		bufs = []simDesc{{addr: slot, len: HeaderSize}, {addr: slot + HeaderSize, len: uint32(len(frame))}}
	} else {
		bufs = []simDesc{{addr: slot, len: uint32(HeaderSize + len(frame))}}
	}
	head, ok := g.rings[txQueue].add(bufs)
	if !ok {
		g.tb.Fatal("transmit ring full")
	}
	g.tr.Notify(txQueue)
	return head
}

// sendRaw queues a chain as given (malformed-chain tests).
func (g *simGuest) sendRaw(bufs []simDesc) uint16 {
	g.tb.Helper()
	head, ok := g.rings[txQueue].add(bufs)
	if !ok {
		g.tb.Fatal("transmit ring full")
	}
	g.tr.Notify(txQueue)
	return head
}

// waitTxUsed waits until n transmit chains came back.
func (g *simGuest) waitTxUsed(n int, timeout time.Duration) []usedEntry {
	g.tb.Helper()
	var got []usedEntry
	deadline := time.Now().Add(timeout)
	for len(got) < n {
		got = append(got, g.rings[txQueue].reap()...)
		if len(got) >= n {
			break
		}
		if time.Now().After(deadline) {
			g.tb.Fatalf("%d of %d transmit chains used after %v (device err: %v)", len(got), n, timeout, g.tr.Err())
		}
		g.waitIRQ(time.Until(deadline))
	}
	return got
}

func (g *simGuest) waitIRQ(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(min(d, 50*time.Millisecond))
	defer t.Stop()
	select {
	case <-g.irq.ch:
	case <-t.C:
	}
}

// rxFrame is one frame the guest received.
type rxFrame struct {
	hdr     Header
	frame   []byte
	buffers int
}

// recv returns the next received frame, joining mergeable buffers as
// Linux's receive_mergeable does, or fails after timeout.
func (g *simGuest) recv(timeout time.Duration) rxFrame {
	g.tb.Helper()
	f, ok := g.tryRecv(timeout)
	if !ok {
		g.tb.Fatalf("no frame received within %v (device err: %v, metrics %+v)", timeout, g.tr.Err(), g.dev.Metrics())
	}
	return f
}

func (g *simGuest) tryRecv(timeout time.Duration) (rxFrame, bool) {
	r := g.rings[rxQueue]
	deadline := time.Now().Add(timeout)
	for {
		if f, ok := g.takeFrame(r); ok {
			return f, true
		}
		if time.Now().After(deadline) {
			return rxFrame{}, false
		}
		g.waitIRQ(time.Until(deadline))
	}
}

// takeFrame consumes one whole frame from the used ring if it is there.
func (g *simGuest) takeFrame(r *simRing) (rxFrame, bool) {
	idx, _ := g.mem.ReadUint16(r.used + 2)
	if idx == r.lastUsed {
		return rxFrame{}, false
	}
	entry := func(i uint16) usedEntry {
		e := r.used + 4 + memory.GuestAddr(8*int(i%r.size))
		id, _ := g.mem.ReadUint32(e)
		n, _ := g.mem.ReadUint32(e + 4)
		return usedEntry{uint16(id), n}
	}
	first := entry(r.lastUsed)
	if first.len < HeaderSize {
		g.tb.Fatalf("receive buffer %d used with %d bytes, shorter than the header", first.head, first.len)
	}
	hb := make([]byte, HeaderSize)
	g.mem.Read(r.bufOf[first.head], hb)
	h, _ := DecodeHeader(hb)
	nb := int(h.NumBuffers)
	if nb < 1 {
		g.tb.Fatalf("num_buffers %d", nb)
	}
	if int(idx-r.lastUsed) < nb {
		if queueCanPublishMany() {
			// Linux would count "buffers missing" and drop the frame.
			g.tb.Fatalf("frame of %d buffers published with only %d used entries", nb, idx-r.lastUsed)
		}
		// The device publishes entry by entry (see usedPublisher): a
		// patient driver waits for the rest.
		return rxFrame{}, false
	}
	var frame []byte
	for i := range nb {
		e := entry(r.lastUsed + uint16(i))
		b := make([]byte, e.len)
		g.mem.Read(r.bufOf[e.head], b)
		if i == 0 {
			b = b[HeaderSize:]
		}
		frame = append(frame, b...)
	}
	for range nb {
		e := entry(r.lastUsed)
		r.free = append(r.free, r.chains[e.head]...)
		delete(r.chains, e.head)
		delete(r.bufOf, e.head)
		r.lastUsed++
	}
	r.armInterrupt()
	return rxFrame{hdr: h, frame: frame, buffers: nb}, true
}
