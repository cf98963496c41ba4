//go:build !race

package vsock

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
)

// Register offsets of virtio-mmio v2 (§4.2.2), as the driver uses them.
const (
	mmioMagic         = 0x000
	mmioVersion       = 0x004
	mmioDeviceID      = 0x008
	mmioDevFeatures   = 0x010
	mmioDevFeatSel    = 0x014
	mmioDrvFeatures   = 0x020
	mmioDrvFeatSel    = 0x024
	mmioQueueSel      = 0x030
	mmioQueueNumMax   = 0x034
	mmioQueueNum      = 0x038
	mmioQueueReady    = 0x044
	mmioQueueNotify   = 0x050
	mmioStatus        = 0x070
	mmioQueueDescLo   = 0x080
	mmioQueueDescHi   = 0x084
	mmioQueueDriverLo = 0x090
	mmioQueueDriverHi = 0x094
	mmioQueueDeviceLo = 0x0a0
	mmioQueueDeviceHi = 0x0a4
	mmioConfig        = 0x100
)

func rd32(t *mmio.Transport, off uint64) uint32 {
	var b [4]byte
	t.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func wr32(t *mmio.Transport, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	t.Write(off, b[:])
}

// TestThroughMMIOTransport probes the device through the virtio-mmio
// transport in the order Linux's virtio_mmio.c and virtio.c do (magic,
// version, device ID, features, FEATURES_OK, queues, DRIVER_OK), reads the
// guest CID from the configuration space as virtio_vsock_update_guest_cid
// does, and makes a host-initiated round trip with queue notifications as
// QueueNotify writes.
func TestThroughMMIOTransport(t *testing.T) {
	dir, _ := os.MkdirTemp("", "vsk")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "v.sock")
	d, err := New(Config{GuestCID: 7, UDSPath: path})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(memory.Config{Size: simMemSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() }) // last: after the transports stop
	irq := &simIRQ{ch: make(chan struct{}, 1)}
	tr, err := mmio.New(d, mmio.Config{Name: "virtio-vsock0", Memory: mem, IRQ: irq})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); d.Close() })

	rings := probeMMIO(t, tr, mem, 7)
	g := newSimGuestOn(t, mem, 7, irq, rings)
	g.start()

	g.listen(52)
	c := hostConnect(t, path, "52")
	gc := g.accept()
	if line := readLine(t, c); line != "OK 1073741824\n" {
		t.Fatalf("got %q", line)
	}
	c.Write([]byte("ping"))
	if b, err := gc.readN(4); err != nil || string(b) != "ping" {
		t.Fatalf("guest read %q %v", b, err)
	}
	gc.write([]byte("pong"))
	if got := readN(t, c, 4); string(got) != "pong" {
		t.Fatalf("host read %q", got)
	}

	// A driver reset ends the connection on the host side too.
	wr32(tr, mmioStatus, 0)
	expectClosed(t, c)
}

// probeMMIO is Linux's probe of a virtio-mmio vsock device with guest CID
// cid: it returns the driver's rings, live after DRIVER_OK.
func probeMMIO(t *testing.T, tr *mmio.Transport, mem *memory.Memory, cid uint64) [3]*vring {
	t.Helper()
	if rd32(tr, mmioMagic) != mmio.MagicValue || rd32(tr, mmioVersion) != 2 || rd32(tr, mmioDeviceID) != uint32(virtio.DeviceVsock) {
		t.Fatal("not a virtio-mmio v2 vsock device")
	}
	wr32(tr, mmioStatus, virtio.StatusAcknowledge)
	wr32(tr, mmioStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	var offered uint64
	for sel := uint32(0); sel < 2; sel++ {
		wr32(tr, mmioDevFeatSel, sel)
		offered |= uint64(rd32(tr, mmioDevFeatures)) << (32 * sel)
	}
	// Linux's vsock driver knows only SEQPACKET (not offered); the ring
	// code takes VERSION_1, EVENT_IDX and INDIRECT_DESC.
	want := offered & (virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc)
	if want&virtio.FeatureVersion1 == 0 || offered&(1<<1) != 0 {
		t.Fatalf("offered features %#x", offered)
	}
	for sel := uint32(0); sel < 2; sel++ {
		wr32(tr, mmioDrvFeatSel, sel)
		wr32(tr, mmioDrvFeatures, uint32(want>>(32*sel)))
	}
	wr32(tr, mmioStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	if rd32(tr, mmioStatus)&virtio.StatusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK refused")
	}
	var rings [3]*vring
	for i := range rings {
		wr32(tr, mmioQueueSel, uint32(i))
		if max := rd32(tr, mmioQueueNumMax); max != QueueSize {
			t.Fatalf("queue %d max %d", i, max)
		}
		r := layoutVring(mem, i, QueueSize)
		wr32(tr, mmioQueueNum, QueueSize)
		wr32(tr, mmioQueueDescLo, uint32(r.desc))
		wr32(tr, mmioQueueDescHi, 0)
		wr32(tr, mmioQueueDriverLo, uint32(r.avail))
		wr32(tr, mmioQueueDriverHi, 0)
		wr32(tr, mmioQueueDeviceLo, uint32(r.used))
		wr32(tr, mmioQueueDeviceHi, 0)
		wr32(tr, mmioQueueReady, 1)
		idx := uint32(i)
		r.kickFn = func() { wr32(tr, mmioQueueNotify, idx) }
		rings[i] = r
	}
	var cidBytes [8]byte
	tr.Read(mmioConfig, cidBytes[:])
	if binary.LittleEndian.Uint64(cidBytes[:]) != cid {
		t.Fatalf("guest_cid %x", cidBytes)
	}
	wr32(tr, mmioStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	if err := tr.Err(); err != nil {
		t.Fatal(err)
	}
	return rings
}

// TestSnapshotRestoreThroughMMIO follows the lead's restore order: pause,
// transport and device state, then in the "new process" NewFromState with a
// new uds_path (vsock_override), the transport's Restore, Resume. The guest
// gets the transport reset, its listener survives, and a client of the new
// path reaches it.
func TestSnapshotRestoreThroughMMIO(t *testing.T) {
	dir, _ := os.MkdirTemp("", "vsk")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "v.sock")
	d, err := New(Config{GuestCID: 7, UDSPath: path})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(memory.Config{Size: simMemSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() }) // last: after the transports stop
	irq := &simIRQ{ch: make(chan struct{}, 1)}
	tr, err := mmio.New(d, mmio.Config{Name: "virtio-vsock0", Memory: mem, IRQ: irq})
	if err != nil {
		t.Fatal(err)
	}
	rings := probeMMIO(t, tr, mem, 7)
	g := newSimGuestOn(t, mem, 7, irq, rings)
	g.start()
	g.listen(52)
	c := hostConnect(t, path, "52")
	old := g.accept()
	readLine(t, c)

	tr.Pause()
	trState, err := tr.State()
	if err != nil {
		t.Fatal(err)
	}
	devState := d.State()
	tr.Close()
	d.Close()

	newPath := filepath.Join(dir, "clone.sock")
	d2, err := NewFromState(devState, newPath)
	if err != nil {
		t.Fatal(err)
	}
	tr2, err := mmio.New(d2, mmio.Config{Name: "virtio-vsock0", Memory: mem, IRQ: irq})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr2.Close(); d2.Close() })
	if err := tr2.Restore(trState); err != nil {
		t.Fatal(err)
	}
	for i, r := range rings {
		idx := uint32(i)
		r.kickFn = func() { wr32(tr2, mmioQueueNotify, idx) }
	}
	// The pool's caller connects at once, before the guest even ran: its
	// REQUEST must not reach the guest before the reset does (the guest
	// would reset it with the old connections: the simulated guest, like
	// Linux may, handles rx before events).
	c2 := hostConnect(t, newPath, "52")
	tr2.Resume()
	// The guest is slow to look (as under emulation): by the time it does,
	// the device has long delivered the reset and seen the client. Were the
	// REQUEST sent now, the simulated guest would handle it first.
	deadline := time.Now().Add(2 * time.Second)
	for idx, _ := mem.ReadUint16(g.ev.used + 2); idx == g.ev.lastUsed; idx, _ = mem.ReadUint16(g.ev.used + 2) {
		if time.Now().After(deadline) {
			t.Fatal("no transport reset delivered")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(30 * time.Millisecond)
	g.until("the transport reset", func() bool { return len(g.events) > 0 })
	if g.events[0] != EventTransportReset || !old.reset {
		t.Fatalf("events %v, old connection reset %v", g.events, old.reset)
	}
	gc := g.accept()
	if line := readLine(t, c2); !strings.HasPrefix(line, "OK ") || line == "OK 1073741824\n" {
		t.Fatalf("got %q, want an OK with a host port away from the snapshot's first", line)
	}
	gc.write([]byte("restored"))
	if got := readN(t, c2, 8); string(got) != "restored" {
		t.Fatalf("got %q", got)
	}
	if gc.reset || gc.closed {
		t.Fatal("the first connection after the restore was reset")
	}
}
