package vsock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
)

// This file is a simulated guest: a split-virtqueue driver over fake guest
// memory (memory.New, no KVM) and a vsock transport that behaves as Linux's
// net/vmw_vsock/virtio_transport{,_common}.c does where the host can see it:
//
//   - rx buffers are single device-writable descriptors of 4 KiB of payload
//     plus the header (virtio_vsock_rx_fill), refilled when half are used;
//   - tx packets are a readable header descriptor plus a readable payload
//     descriptor (virtio_transport_send_skb), at most 64 KiB of payload;
//   - eight 4-byte event buffers (virtio_vsock_event_fill);
//   - every packet carries the socket's buf_alloc (256 KiB) and fwd_cnt; a
//     sender never exceeds the peer's credit; a receiver sends
//     CREDIT_UPDATE when its free space falls below 64 KiB after a read and
//     answers CREDIT_REQUEST; an RW beyond the credit is dropped;
//   - REQUEST to a listener gets RESPONSE, to anything else RST; a peer
//     SHUTDOWN with both flags and no unread data gets RST; close() sends
//     SHUTDOWN(both); packets for unknown connections get RST (except RST);
//   - TRANSPORT_RESET closes every connection, keeps listeners.

const (
	simMemSize   = 32 << 20
	simRxPayload = 4096
	simBufAlloc  = 256 << 10
	simMaxPkt    = 64 << 10
	descFNext    = 1
	descFWrite   = 2
	simRingBase  = 0x10000
	simRxBase    = 0x100000
	simTxBase    = 0x300000
	simTxSlot    = HeaderSize + simMaxPkt
	simEvBase    = 0x80000
)

// simFence orders the simulated driver's ring accesses as Linux's
// virtio_mb does.
var simFence atomic.Uint32

// simIRQ is the transport's interrupt as the guest sees it.
type simIRQ struct {
	ch    chan struct{}
	count int64
	mu    sync.Mutex
}

func (i *simIRQ) UsedBuffer() error {
	i.mu.Lock()
	i.count++
	i.mu.Unlock()
	select {
	case i.ch <- struct{}{}:
	default:
	}
	return nil
}
func (i *simIRQ) ConfigChanged() error { return nil }

// Trigger makes simIRQ the transport's interrupt line too.
func (i *simIRQ) Trigger() error { return i.UsedBuffer() }

// vring is the driver's half of one split virtqueue.
type vring struct {
	mem                *memory.Memory
	size               uint16
	desc, avail, used  memory.GuestAddr
	availIdx, lastUsed uint16
	free               []uint16
	notify             chan struct{}
	kickFn             func() // when set, notifies instead of notify (an MMIO write)
	q                  *virtio.Queue
	addrOf             map[uint16]memory.GuestAddr // head → buffer (rx, ev)
	chains             map[uint16][]uint16         // head → its descriptors
}

// layoutVring places the driver's rings of queue index in guest memory.
func layoutVring(mem *memory.Memory, index int, size uint16) *vring {
	base := memory.GuestAddr(simRingBase * (index + 1))
	r := &vring{mem: mem, size: size, desc: base, avail: base + 0x1000, used: base + 0x2000,
		notify: make(chan struct{}, 1), addrOf: map[uint16]memory.GuestAddr{}, chains: map[uint16][]uint16{}}
	for i := uint16(0); i < size; i++ {
		r.free = append(r.free, i)
	}
	return r
}

// newVring lays out a ring and makes the device's queue for it directly,
// as a transport would at DRIVER_OK.
func newVring(mem *memory.Memory, index int, size uint16, features uint64, irq virtio.Interrupt) (*vring, error) {
	r := layoutVring(mem, index, size)
	q := virtio.NewQueue(index, QueueSize)
	q.SetSize(size)
	q.SetDescTable(r.desc)
	q.SetAvailRing(r.avail)
	q.SetUsedRing(r.used)
	q.SetReady(true)
	if err := q.Activate(mem, features, irq); err != nil {
		return nil, err
	}
	r.q = q
	return r, nil
}

type seg struct {
	addr  memory.GuestAddr
	len   uint32
	write bool
}

// add publishes a chain; it reports false when the ring has no free
// descriptors (the caller retries after reclaiming).
func (r *vring) add(segs ...seg) (uint16, bool) {
	if len(r.free) < len(segs) {
		return 0, false
	}
	idx := r.free[len(r.free)-len(segs):]
	r.free = r.free[:len(r.free)-len(segs)]
	for i, s := range segs {
		d := r.desc + memory.GuestAddr(16*uint64(idx[i]))
		r.mem.WriteUint64(d, uint64(s.addr))
		r.mem.WriteUint32(d+8, s.len)
		var flags, next uint16
		if s.write {
			flags |= descFWrite
		}
		if i+1 < len(segs) {
			flags |= descFNext
			next = idx[i+1]
		}
		r.mem.WriteUint16(d+12, flags)
		r.mem.WriteUint16(d+14, next)
	}
	head := idx[0]
	r.chains[head] = append([]uint16(nil), idx...)
	r.mem.WriteUint16(r.avail+4+2*memory.GuestAddr(r.availIdx%r.size), head)
	r.availIdx++
	r.mem.WriteUint16(r.avail+2, r.availIdx) // x86: stores are not reordered with stores
	return head, true
}

// kick notifies the device, coalesced like an ioeventfd.
func (r *vring) kick() {
	if r.kickFn != nil {
		r.kickFn()
		return
	}
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

type usedElem struct {
	head uint16
	len  uint32
}

// reap returns the chains the device used since the last call and frees
// their descriptors. Like Linux's virtqueue_enable_cb it then publishes
// used_event (VIRTIO_F_EVENT_IDX: interrupt me after this entry) and looks
// again, so that no interrupt is lost.
func (r *vring) reap(dst []usedElem) []usedElem {
	for {
		idx, _ := r.mem.ReadUint16(r.used + 2)
		if r.lastUsed == idx {
			r.mem.WriteUint16(r.avail+4+2*memory.GuestAddr(r.size), r.lastUsed)
			// Order: used_event before re-reading used.idx (virtio_mb in
			// virtqueue_enable_cb); a locked instruction is a full fence.
			simFence.Add(1)
			if again, _ := r.mem.ReadUint16(r.used + 2); again == idx {
				return dst
			}
			continue
		}
		for r.lastUsed != idx {
			e := r.used + 4 + 8*memory.GuestAddr(r.lastUsed%r.size)
			id, _ := r.mem.ReadUint32(e)
			l, _ := r.mem.ReadUint32(e + 4)
			head := uint16(id)
			r.free = append(r.free, r.chains[head]...)
			delete(r.chains, head)
			dst = append(dst, usedElem{head, l})
			r.lastUsed++
		}
	}
}

// gconn is a guest socket.
type gconn struct {
	g                     *simGuest
	local, peer           uint32 // guest port, host port
	established, closed   bool
	reset                 bool
	data                  []byte
	fwdCnt, lastFwdCnt    uint32
	txCnt                 uint32
	peerBufAlloc, peerFwd uint32
	peerShut              uint32
}

// simGuest is the guest: its driver rings and its vsock sockets. It is used
// from one goroutine (its "vCPU").
type simGuest struct {
	t         testing.TB
	mem       *memory.Memory
	cid       uint64
	irq       *simIRQ
	rx, tx    *vring
	ev        *vring
	rxBufs    int
	listeners map[uint32]bool
	conns     map[[2]uint32]*gconn
	backlog   []*gconn
	nextPort  uint32
	events    []uint32
	hdr       [HeaderSize]byte
	used      []usedElem
	txSlots   map[uint16]int // tx chain head → slot
	slotFree  []int
}

func newSimGuest(t testing.TB, cid uint64) (*simGuest, virtio.Activation) {
	mem, err := memory.New(memory.Config{Size: simMemSize, Backing: memory.Anonymous})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	features := uint64(virtio.QueueFeatures &^ virtio.FeatureIndirectDesc)
	irq := &simIRQ{ch: make(chan struct{}, 1)}
	var rings [3]*vring
	for i := range rings {
		if rings[i], err = newVring(mem, i, QueueSize, features, irq); err != nil {
			t.Fatal(err)
		}
	}
	g := newSimGuestOn(t, mem, cid, irq, rings)
	a := virtio.Activation{
		Features:  features,
		Memory:    mem,
		Queues:    []*virtio.Queue{g.rx.q, g.tx.q, g.ev.q},
		Notify:    []<-chan struct{}{g.rx.notify, g.tx.notify, g.ev.notify},
		Interrupt: irq,
	}
	g.start()
	return g, a
}

// newSimGuestOn builds the guest's vsock side on rings already laid out.
func newSimGuestOn(t testing.TB, mem *memory.Memory, cid uint64, irq *simIRQ, rings [3]*vring) *simGuest {
	g := &simGuest{t: t, mem: mem, cid: cid, irq: irq, listeners: map[uint32]bool{},
		conns: map[[2]uint32]*gconn{}, nextPort: 1024, txSlots: map[uint16]int{}}
	for i := 0; i < QueueSize/2; i++ {
		g.slotFree = append(g.slotFree, i)
	}
	g.rx, g.tx, g.ev = rings[0], rings[1], rings[2]
	return g
}

// start fills the rx and event queues, as virtio_vsock_vqs_start does.
func (g *simGuest) start() {
	g.fillRx()
	for i := 0; i < 8; i++ {
		a := memory.GuestAddr(simEvBase + 4*i)
		h, _ := g.ev.add(seg{a, eventSize, true})
		g.ev.addrOf[h] = a
	}
	g.ev.kick()
}

// fillRx adds 4 KiB rx buffers until the ring is full, as
// virtio_vsock_rx_fill does, and kicks.
func (g *simGuest) fillRx() {
	added := false
	for len(g.rx.free) > 0 {
		slot := g.rx.free[len(g.rx.free)-1]
		a := memory.GuestAddr(simRxBase + uint64(slot)*(HeaderSize+simRxPayload))
		h, ok := g.rx.add(seg{a, HeaderSize + simRxPayload, true})
		if !ok {
			break
		}
		g.rx.addrOf[h] = a
		g.rxBufs++
		added = true
	}
	if added {
		g.rx.kick()
	}
}

// sendPkt puts one packet on the tx queue (header descriptor + payload
// descriptor) and kicks, reclaiming used tx buffers when the ring is full.
func (g *simGuest) sendPkt(h Header, payload []byte) {
	h.SrcCID, h.DstCID, h.Type = g.cid, HostCID, TypeStream
	h.Len = uint32(len(payload))
	for len(g.slotFree) == 0 || len(g.tx.free) < 2 {
		g.step(true)
	}
	slot := g.slotFree[len(g.slotFree)-1]
	g.slotFree = g.slotFree[:len(g.slotFree)-1]
	a := memory.GuestAddr(simTxBase + uint64(slot)*simTxSlot)
	h.Encode(g.hdr[:])
	g.mem.Write(a, g.hdr[:])
	segs := []seg{{a, HeaderSize, false}}
	if len(payload) > 0 {
		g.mem.Write(a+HeaderSize, payload)
		segs = append(segs, seg{a + HeaderSize, uint32(len(payload)), false})
	}
	head, _ := g.tx.add(segs...)
	g.txSlots[head] = slot
	g.tx.kick()
}

// connHdr is a packet header of c carrying its credit (virtio_transport_inc_tx_pkt).
func (c *gconn) connHdr(op Op) Header {
	c.lastFwdCnt = c.fwdCnt
	return Header{SrcPort: c.local, DstPort: c.peer, Op: op, BufAlloc: simBufAlloc, FwdCnt: c.fwdCnt}
}

func (g *simGuest) rst(local, peer uint32) {
	g.sendPkt(Header{SrcPort: local, DstPort: peer, Op: OpRst}, nil)
}

// step handles what the device returned: tx buffers, rx packets, events. With
// wait it first waits (up to 2 s) for an interrupt.
func (g *simGuest) step(wait bool) {
	if wait {
		select {
		case <-g.irq.ch:
		case <-time.After(2 * time.Second):
			g.t.Fatalf("simulated guest: no interrupt for 2 s")
		}
	}
	g.used = g.tx.reap(g.used[:0])
	for _, u := range g.used {
		g.slotFree = append(g.slotFree, g.txSlots[u.head])
		delete(g.txSlots, u.head)
	}
	g.used = g.rx.reap(g.used[:0])
	for _, u := range g.used {
		a := g.rx.addrOf[u.head]
		delete(g.rx.addrOf, u.head)
		g.rxBufs--
		if u.len < HeaderSize || u.len > HeaderSize+simRxPayload {
			continue // virtio_transport_rx_work drops short/long packets
		}
		buf := make([]byte, u.len)
		g.mem.Read(a, buf)
		h, _ := DecodeHeader(buf)
		if h.Len > u.len-HeaderSize {
			continue
		}
		g.recv(h, buf[HeaderSize:HeaderSize+h.Len])
	}
	if g.rxBufs < QueueSize/2 {
		g.fillRx()
	}
	g.used = g.ev.reap(g.used[:0])
	for _, u := range g.used {
		a := g.ev.addrOf[u.head]
		delete(g.ev.addrOf, u.head)
		if u.len == eventSize {
			id, _ := g.mem.ReadUint32(a)
			g.events = append(g.events, id)
			if id == EventTransportReset {
				for _, c := range g.conns {
					c.reset, c.closed = true, true
				}
				g.conns = map[[2]uint32]*gconn{}
			}
		}
		h, _ := g.ev.add(seg{a, eventSize, true})
		g.ev.addrOf[h] = a
		g.ev.kick()
	}
}

// recv is virtio_transport_recv_pkt for the cases the host can cause.
func (g *simGuest) recv(h Header, payload []byte) {
	if h.DstCID != g.cid || h.SrcCID != HostCID || h.Type != TypeStream {
		g.t.Errorf("simulated guest: misaddressed packet %v", h)
		return
	}
	key := [2]uint32{h.DstPort, h.SrcPort}
	c := g.conns[key]
	if c == nil {
		switch {
		case h.Op == OpRequest && g.listeners[h.DstPort]:
			c = &gconn{g: g, local: h.DstPort, peer: h.SrcPort, established: true, peerBufAlloc: h.BufAlloc, peerFwd: h.FwdCnt}
			g.conns[key] = c
			g.backlog = append(g.backlog, c)
			g.sendPkt(c.connHdr(OpResponse), nil)
		case h.Op != OpRst:
			g.rst(h.DstPort, h.SrcPort)
		}
		return
	}
	c.peerBufAlloc, c.peerFwd = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case OpResponse:
		c.established = true
	case OpRW:
		if uint32(len(c.data))+h.Len > simBufAlloc {
			g.t.Errorf("simulated guest: host overran the guest's credit on %v", h)
			return
		}
		c.data = append(c.data, payload...)
	case OpCreditRequest:
		g.sendPkt(c.connHdr(OpCreditUpdate), nil)
	case OpCreditUpdate:
	case OpShutdown:
		c.peerShut |= h.Flags
		if c.peerShut == shutdownBoth && len(c.data) == 0 {
			g.sendPkt(c.connHdr(OpRst), nil)
			c.closed = true
			delete(g.conns, key)
		}
	case OpRst:
		c.reset, c.closed = true, true
		delete(g.conns, key)
	}
}

// until steps until cond holds.
func (g *simGuest) until(what string, cond func() bool) {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("simulated guest: timed out waiting for %s", what)
		}
		select {
		case <-g.irq.ch:
		case <-time.After(10 * time.Millisecond):
		}
		g.step(false)
	}
}

func (g *simGuest) listen(port uint32) { g.listeners[port] = true }

func (g *simGuest) accept() *gconn {
	g.until("a connection to accept", func() bool { return len(g.backlog) > 0 })
	c := g.backlog[0]
	g.backlog = g.backlog[1:]
	return c
}

var errConnReset = errors.New("connection reset")

func (g *simGuest) connect(port uint32) (*gconn, error) {
	g.nextPort++
	c := &gconn{g: g, local: g.nextPort, peer: port}
	g.conns[[2]uint32{c.local, c.peer}] = c
	g.sendPkt(c.connHdr(OpRequest), nil)
	g.until("connect", func() bool { return c.established || c.closed })
	if c.reset {
		return nil, errConnReset
	}
	return c, nil
}

func (c *gconn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwd
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// write sends p within the host's credit, waiting for credit updates.
func (c *gconn) write(p []byte) error {
	for len(p) > 0 {
		if c.closed {
			return errConnReset
		}
		n := min(uint32(len(p)), c.credit(), simMaxPkt)
		if n == 0 {
			c.g.step(true)
			continue
		}
		c.txCnt += n
		c.g.sendPkt(c.connHdr(OpRW), p[:n])
		p = p[n:]
	}
	return nil
}

// read waits for at least one byte (or the end) and returns what arrived,
// then gives credit back as virtio_transport_stream_do_dequeue does.
func (c *gconn) read() ([]byte, error) {
	c.g.until("data", func() bool { return len(c.data) > 0 || c.closed || c.peerShut&ShutdownSend != 0 })
	if len(c.data) == 0 {
		if c.reset {
			return nil, errConnReset
		}
		return nil, nil // EOF
	}
	b := c.data
	c.data = nil
	c.fwdCnt += uint32(len(b))
	if free := simBufAlloc - (c.fwdCnt - c.lastFwdCnt); free < simMaxPkt {
		c.g.sendPkt(c.connHdr(OpCreditUpdate), nil)
	}
	return b, nil
}

// readN reads exactly n bytes.
func (c *gconn) readN(n int) ([]byte, error) {
	var out []byte
	for len(out) < n {
		b, err := c.read()
		if err != nil {
			return out, err
		}
		if b == nil {
			return out, fmt.Errorf("EOF after %d of %d bytes", len(out), n)
		}
		out = append(out, b...)
	}
	return out, nil
}

// close is virtio_transport_close: SHUTDOWN(both), then wait for the RST.
func (c *gconn) close() {
	if c.closed {
		return
	}
	h := c.connHdr(OpShutdown)
	h.Flags = shutdownBoth
	c.g.sendPkt(h, nil)
	c.g.until("the host's RST after close", func() bool { return c.closed })
}

// startDevice runs d's worker as the transport would; the returned stop
// (also run at the end of the test) pauses it and reports Run's error.
func startDevice(t testing.TB, d *Device) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}
