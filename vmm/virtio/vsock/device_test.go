//go:build !race

// The tests in this file run the device's worker against the simulated
// guest concurrently, as a VM does: they share guest memory the way a vCPU
// and a device do, ordered by the virtqueue's barriers, which the race
// detector cannot see. They are left out of -race builds for that reason;
// the muxer's tests cover the same host-side logic under the race detector.

package vsock

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/virtio"
)

func newSimDevice(t testing.TB, opts ...Option) (*Device, *simGuest, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	d, err := New(Config{GuestCID: testCID, UDSPath: path}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	g, a := newSimGuest(t, testCID)
	if err := d.Activate(a); err != nil {
		t.Fatal(err)
	}
	return d, g, path
}

func hostConnect(t testing.TB, path string, port string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("CONNECT " + port + "\n")); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLinuxGuestHostInitiated(t *testing.T) {
	d, g, path := newSimDevice(t)
	startDevice(t, d)
	g.listen(52)
	c := hostConnect(t, path, "52")
	gc := g.accept()
	if line := readLine(t, c); line != "OK 1073741824\n" {
		t.Fatalf("got %q", line)
	}
	c.Write([]byte("hello"))
	if b, err := gc.readN(5); err != nil || string(b) != "hello" {
		t.Fatalf("guest read %q, %v", b, err)
	}
	if err := gc.write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, 5); string(got) != "world" {
		t.Fatalf("host read %q", got)
	}
	gc.close()
	expectEOF(t, c)
}

func TestLinuxGuestNoListener(t *testing.T) {
	d, g, path := newSimDevice(t)
	startDevice(t, d)
	c := hostConnect(t, path, "52") // the guest listens nowhere
	done := make(chan struct{})
	go func() {
		defer close(done)
		expectEOF(t, c)
	}()
	g.until("the host client to be refused", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}

func TestLinuxGuestInitiated(t *testing.T) {
	d, g, path := newSimDevice(t)
	startDevice(t, d)
	l, err := net.Listen("unix", path+"_52")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	gc, err := g.connect(52)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	gc.write([]byte("guest says"))
	if got := readN(t, hc, 10); string(got) != "guest says" {
		t.Fatalf("host read %q", got)
	}
	hc.Write([]byte("host says"))
	if b, err := gc.readN(9); err != nil || string(b) != "host says" {
		t.Fatalf("guest read %q %v", b, err)
	}
	hc.Close()
	if b, err := gc.read(); b != nil || err != nil {
		t.Fatalf("after host close: %q %v, want EOF", b, err)
	}
	if _, err := g.connect(53); err != errConnReset {
		t.Fatalf("connect to a port nobody listens on: %v", err)
	}
}

func TestLinuxGuestBulkBothWays(t *testing.T) {
	d, g, path := newSimDevice(t)
	startDevice(t, d)
	g.listen(52)
	c := hostConnect(t, path, "52")
	gc := g.accept()
	readLine(t, c)
	const size = 4 << 20
	up := bytes.Repeat([]byte("guest→host "), size/12)
	down := bytes.Repeat([]byte("host→guest!"), size/11)
	// The host writes and reads concurrently; the guest writes all, then
	// reads all: the host's writes wait for credit meanwhile.
	hostGot := make(chan []byte)
	go func() {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		b := make([]byte, len(up))
		n, _ := io.ReadFull(c, b)
		hostGot <- b[:n]
	}()
	go c.Write(down)
	if err := gc.write(up); err != nil {
		t.Fatal(err)
	}
	got, err := gc.readN(len(down))
	if err != nil || !bytes.Equal(got, down) {
		t.Fatalf("guest read %d bytes (%v), want %d intact", len(got), err, len(down))
	}
	if hb := <-hostGot; !bytes.Equal(hb, up) {
		t.Fatalf("host read %d bytes, want %d intact", len(hb), len(up))
	}
}

func TestTransportResetAfterRestore(t *testing.T) {
	d, g, path := newSimDevice(t)
	stop := startDevice(t, d)
	g.listen(52)
	c := hostConnect(t, path, "52")
	old := g.accept()
	readLine(t, c)

	// Pause, snapshot, and restore into a new device at another path (the
	// original process is gone: its socket closes).
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := d.State()
	if st.GuestCID != testCID || st.UDSPath != path {
		t.Fatalf("state %+v", st)
	}
	var qs []virtio.QueueState
	for _, q := range d.act.Queues {
		qs = append(qs, q.State())
	}
	d.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("old socket still there: %v", err)
	}
	expectClosed(t, c)

	// The "new process": the device from its state with a new path, then
	// the queues as the transport restores them, then activation.
	newPath := path + ".clone"
	d2, err := NewFromState(st, newPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() }) // after Run stops (cleanups run last-in first-out)
	a := d.act
	a.Queues = nil
	for i, q := range qs {
		rq, err := virtio.RestoreQueue(i, QueueSize, q, a.Memory, a.Features, a.Interrupt)
		if err != nil {
			t.Fatal(err)
		}
		a.Queues = append(a.Queues, rq)
	}
	if err := d2.Activate(a); err != nil {
		t.Fatal(err)
	}
	startDevice(t, d2)
	g.until("the transport reset event", func() bool { return len(g.events) == 1 })
	if g.events[0] != EventTransportReset || !old.reset {
		t.Fatalf("events %v, old connection reset %v", g.events, old.reset)
	}
	// The listener survived: a new client reaches it through the new path.
	c2 := hostConnect(t, newPath, "52")
	gc := g.accept()
	readLine(t, c2)
	gc.write([]byte("after restore"))
	if got := readN(t, c2, 13); string(got) != "after restore" {
		t.Fatalf("got %q", got)
	}
}

func TestMalformedTxChainsDoNotStopTheDevice(t *testing.T) {
	d, g, path := newSimDevice(t)
	startDevice(t, d)
	// A chain shorter than a header, and a header claiming more payload than
	// the chain holds.
	h, _ := g.tx.add(seg{simTxBase, 10, false})
	g.txSlots[h] = 0
	g.slotFree = g.slotFree[1:]
	g.tx.kick()
	bad := Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 1, DstPort: 2, Type: TypeStream, Op: OpRW, Len: 4000}
	bad.Encode(g.hdr[:])
	g.mem.Write(simTxBase+simTxSlot, g.hdr[:])
	h, _ = g.tx.add(seg{simTxBase + simTxSlot, HeaderSize, false}, seg{simTxBase + simTxSlot + HeaderSize, 100, false})
	g.txSlots[h] = 1
	g.slotFree = g.slotFree[1:]
	g.tx.kick()
	g.until("an RST for the bad length", func() bool { return d.Metrics().RstsSent.Load() >= 1 })
	// Still serving.
	g.listen(52)
	c := hostConnect(t, path, "52")
	g.accept()
	if line := readLine(t, c); !strings.HasPrefix(line, "OK ") {
		t.Fatalf("got %q", line)
	}
	if d.Metrics().PacketsDropped.Load() != 1 {
		t.Fatalf("dropped %d", d.Metrics().PacketsDropped.Load())
	}
}

func TestConfigSpace(t *testing.T) {
	d, _, _ := newSimDevice(t)
	tests := []struct {
		off  uint64
		n    int
		want []byte
	}{
		{0, 8, []byte{3, 0, 0, 0, 0, 0, 0, 0}},
		{0, 4, []byte{3, 0, 0, 0}},
		{4, 4, []byte{0, 0, 0, 0}},
		{0, 1, []byte{3}},
		{6, 4, []byte{0, 0, 0, 0}},
		{100, 2, []byte{0, 0}},
	}
	for _, tt := range tests {
		b := bytes.Repeat([]byte{0xaa}, tt.n)
		d.ReadConfig(tt.off, b)
		if !bytes.Equal(b, tt.want) {
			t.Errorf("ReadConfig(%d, %d) = %v, want %v", tt.off, tt.n, b, tt.want)
		}
	}
	d.WriteConfig(0, []byte{9})
	b := make([]byte, 1)
	d.ReadConfig(0, b)
	if b[0] != 3 {
		t.Fatal("configuration written")
	}
}

func TestRestoreChecksState(t *testing.T) {
	dir := shortTempDir(t)
	for _, st := range []State{{GuestCID: 2, UDSPath: dir + "/a"}, {GuestCID: 3, UDSPath: ""}, {GuestCID: 3, UDSPath: "@x"}} {
		if d, err := NewFromState(st, ""); err == nil {
			d.Close()
			t.Errorf("state %+v accepted", st)
		}
	}
	d, err := New(Config{GuestCID: 3, UDSPath: dir + "/b"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Restore(State{GuestCID: 4, UDSPath: dir + "/b"}); err == nil || !strings.Contains(err.Error(), "guest CID") {
		t.Fatalf("restore with another CID: %v", err)
	}
}

func TestLinuxGuestManyConcurrentClients(t *testing.T) {
	d, g, path := newSimDevice(t)
	startDevice(t, d)
	stop, done := make(chan struct{}), make(chan struct{})
	go g.echoServer(stop, done)
	defer func() { close(stop); <-done }()
	const clients = 64
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func(i int) {
			c, err := net.Dial("unix", path)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := bytes.Repeat([]byte{byte('a' + i%26)}, 1000+i*100)
			c.Write(append([]byte("CONNECT 52\n"), msg...))
			r := bufio.NewReader(c)
			if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
				errs <- fmt.Errorf("client %d: handshake %q %v", i, line, err)
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("client %d: echo of %d bytes: %v", i, len(msg), err)
				return
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < clients; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := d.Metrics().ConnsAdded.Load(); n != clients {
		t.Fatalf("%d connections added, want %d", n, clients)
	}
}
