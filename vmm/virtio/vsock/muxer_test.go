package vsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testCID = 3

// pkt is a packet the muxer gave the guest.
type pkt struct {
	h    Header
	data []byte
}

// testMux drives a muxer as the device worker would, with the test playing
// the guest: it sends packets and takes what the muxer has for it.
type testMux struct {
	t    *testing.T
	m    *muxer
	path string
	buf  []byte
	// peerBufAlloc and fwdCnt are what the test guest reports in its packets.
	peerBufAlloc, fwdCnt uint32
}

func shortTempDir(t *testing.T) string {
	// t.TempDir paths can exceed sun_path; keep socket paths short.
	dir, err := os.MkdirTemp("", "vsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newTestMux(t *testing.T, p connParams, maxConns int) *testMux {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "v.sock")
	if p.bufAlloc == 0 {
		p = defaultParams()
	}
	m, err := newMuxer(testCID, path, muxerOptions{params: p, maxConns: maxConns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.close)
	return &testMux{t: t, m: m, path: path, buf: make([]byte, 4096), peerBufAlloc: 256 << 10}
}

// hdr builds a guest packet header for a connection.
func (tm *testMux) hdr(op Op, guestPort, hostPort uint32) Header {
	return Header{SrcCID: testCID, DstCID: HostCID, SrcPort: guestPort, DstPort: hostPort,
		Type: TypeStream, Op: op, BufAlloc: tm.peerBufAlloc, FwdCnt: tm.fwdCnt}
}

func (tm *testMux) send(h Header, payload []byte) {
	h.Len = uint32(len(payload))
	tm.m.send(h, sgList{payload})
}

// next waits up to two seconds for a packet for the guest.
func (tm *testMux) next() (pkt, bool) { return tm.nextWithin(2 * time.Second) }

func (tm *testMux) nextWithin(d time.Duration) (pkt, bool) {
	deadline := time.Now().Add(d)
	for {
		var h Header
		if tm.m.recv(&h, sgList{tm.buf}) {
			return pkt{h, append([]byte(nil), tm.buf[:h.Len]...)}, true
		}
		if time.Now().After(deadline) {
			return pkt{}, false
		}
		if _, err := tm.m.poll(10 * time.Millisecond); err != nil {
			tm.t.Fatal(err)
		}
	}
}

// expect waits for a packet and checks its operation.
func (tm *testMux) expect(op Op) pkt {
	tm.t.Helper()
	p, ok := tm.next()
	if !ok {
		tm.t.Fatalf("no packet for the guest, want %s", op)
	}
	if p.h.Op != op {
		tm.t.Fatalf("got %v, want %s", p.h, op)
	}
	return p
}

// quiet checks that the muxer has nothing for the guest for a while.
func (tm *testMux) quiet(d time.Duration) {
	tm.t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		tm.m.poll(5 * time.Millisecond)
		var h Header
		if tm.m.recv(&h, sgList{tm.buf}) {
			tm.t.Fatalf("unexpected packet %v", h)
		}
	}
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("reading a line (have %q): %v", b, err)
		}
		b = append(b, one[0])
		if one[0] == '\n' {
			return string(b)
		}
	}
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 16)
	n, err := c.Read(b)
	if err != io.EOF {
		t.Fatalf("read %q, %v; want EOF", b[:n], err)
	}
}

// expectClosed accepts EOF or a reset: closing a Unix socket with unread
// bytes resets its peer.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 1<<16)
	for {
		n, err := c.Read(b)
		if err == io.EOF || errors.Is(err, unix.ECONNRESET) {
			return
		}
		if err != nil {
			t.Fatalf("read %d bytes, %v; want EOF or reset", n, err)
		}
	}
}

// shrinkSendBuffer makes the muxer's socket of a connection small, so that
// a host reader that stops shows back-pressure at once.
func (tm *testMux) shrinkSendBuffer(key connKey) {
	c := tm.m.conns[key]
	if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		tm.t.Fatal(err)
	}
}

// connectHost opens a host-initiated connection to guest port and completes
// the handshake; it returns the client socket and the host port.
func (tm *testMux) connectHost(port uint32) (*net.UnixConn, uint32) {
	tm.t.Helper()
	c := dial(tm.t, tm.path)
	if _, err := c.Write([]byte("CONNECT " + strconv.Itoa(int(port)) + "\n")); err != nil {
		tm.t.Fatal(err)
	}
	req := tm.expect(OpRequest)
	if req.h.SrcCID != HostCID || req.h.DstCID != testCID || req.h.DstPort != port || req.h.Type != TypeStream {
		tm.t.Fatalf("bad request %v", req.h)
	}
	if req.h.BufAlloc != DefaultBufAlloc && req.h.BufAlloc != uint32(tm.m.p.bufAlloc) {
		tm.t.Fatalf("request advertises buf_alloc %d", req.h.BufAlloc)
	}
	tm.send(tm.hdr(OpResponse, port, req.h.SrcPort), nil)
	if got, want := readLine(tm.t, c), "OK "+strconv.Itoa(int(req.h.SrcPort))+"\n"; got != want {
		tm.t.Fatalf("handshake answer %q, want %q", got, want)
	}
	return c, req.h.SrcPort
}

func TestHostInitiatedRoundTrip(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	c, hostPort := tm.connectHost(52)
	if hostPort != localPortFirst {
		t.Errorf("first host port %d, want %d (Firecracker's first)", hostPort, localPortFirst)
	}
	c.Write([]byte("ping"))
	if p := tm.expect(OpRW); string(p.data) != "ping" || p.h.SrcPort != hostPort || p.h.DstPort != 52 {
		t.Fatalf("guest got %v %q", p.h, p.data)
	}
	tm.send(tm.hdr(OpRW, 52, hostPort), []byte("pong"))
	if got := readN(t, c, 4); string(got) != "pong" {
		t.Fatalf("host got %q", got)
	}
	// The host closes: the guest is told neither side sends any more, and
	// answers with an RST, which ends the connection.
	c.Close()
	if p := tm.expect(OpShutdown); p.h.Flags != shutdownBoth {
		t.Fatalf("shutdown flags %#x", p.h.Flags)
	}
	tm.send(tm.hdr(OpRst, 52, hostPort), nil)
	if len(tm.m.conns) != 0 || len(tm.m.byFd) != 0 || len(tm.m.ports) != 0 {
		t.Fatalf("left %d conns, %d fds, %d ports", len(tm.m.conns), len(tm.m.byFd), len(tm.m.ports))
	}
	tm.quiet(20 * time.Millisecond)
}

func TestGuestCloseReachesHostAsEOF(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	c, hostPort := tm.connectHost(52)
	tm.send(tm.hdr(OpRW, 52, hostPort), []byte("answer"))
	h := tm.hdr(OpShutdown, 52, hostPort)
	h.Flags = shutdownBoth
	tm.send(h, nil)
	if got := readN(t, c, 6); string(got) != "answer" {
		t.Fatalf("host got %q", got)
	}
	expectEOF(t, c)
	tm.expect(OpRst) // completes the guest's close
	if len(tm.m.conns) != 0 {
		t.Fatal("connection kept after close")
	}
}

func TestPipelinedConnectAndRequest(t *testing.T) {
	// A pool caller writes CONNECT and its request in one go; the request
	// must wait in the socket for the guest, not be eaten by the handshake.
	tm := newTestMux(t, connParams{}, 0)
	c := dial(t, tm.path)
	c.Write([]byte("CONNECT 52\nrun uptime\n"))
	req := tm.expect(OpRequest)
	tm.quiet(10 * time.Millisecond) // nothing flows before the guest accepts
	tm.send(tm.hdr(OpResponse, 52, req.h.SrcPort), nil)
	if line := readLine(t, c); !strings.HasPrefix(line, "OK ") {
		t.Fatalf("got %q", line)
	}
	if p := tm.expect(OpRW); string(p.data) != "run uptime\n" {
		t.Fatalf("guest got %q", p.data)
	}
}

func TestHostHalfCloseStillGetsAnswer(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	c, hostPort := tm.connectHost(52)
	c.Write([]byte("request"))
	c.CloseWrite()
	if p := tm.expect(OpRW); string(p.data) != "request" {
		t.Fatalf("guest got %q", p.data)
	}
	if p := tm.expect(OpShutdown); p.h.Flags != ShutdownSend {
		t.Fatalf("half-close sent flags %#x, want SEND only", p.h.Flags)
	}
	tm.send(tm.hdr(OpRW, 52, hostPort), []byte("answer"))
	if got := readN(t, c, 6); string(got) != "answer" {
		t.Fatalf("host got %q", got)
	}
	c.Close()
	if p := tm.expect(OpShutdown); p.h.Flags != shutdownBoth {
		t.Fatalf("after full close flags %#x", p.h.Flags)
	}
	tm.send(tm.hdr(OpRst, 52, hostPort), nil)
	if len(tm.m.conns) != 0 {
		t.Fatal("connection kept")
	}
}

func TestHostInitiatedNoGuestListener(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	c := dial(t, tm.path)
	c.Write([]byte("CONNECT 99\n"))
	req := tm.expect(OpRequest)
	tm.send(tm.hdr(OpRst, 99, req.h.SrcPort), nil) // the guest has no listener
	expectEOF(t, c)
	if len(tm.m.conns) != 0 {
		t.Fatal("connection kept")
	}
}

func TestHostInitiatedGuestNeverAnswers(t *testing.T) {
	p := defaultParams()
	p.requestTimeout = 30 * time.Millisecond
	tm := newTestMux(t, p, 0)
	c := dial(t, tm.path)
	c.Write([]byte("CONNECT 52\n"))
	req := tm.expect(OpRequest)
	rst := tm.expect(OpRst)
	if rst.h.SrcPort != req.h.SrcPort || rst.h.DstPort != 52 {
		t.Fatalf("rst %v for request %v", rst.h, req.h)
	}
	expectEOF(t, c)
	if tm.m.m.ConnsKilled.Load() != 1 {
		t.Fatalf("killed %d", tm.m.m.ConnsKilled.Load())
	}
}

func TestBadConnectLines(t *testing.T) {
	p := defaultParams()
	p.handshakeTimeout = 50 * time.Millisecond
	tm := newTestMux(t, p, 0)
	for _, line := range []string{"HELLO 52\n", "CONNECT x\n", "CONNECT " + strings.Repeat("9", 40), "CONNECT 52"} {
		c := dial(t, tm.path)
		c.Write([]byte(line))
		if line == "CONNECT 52" {
			// No newline: the client is dropped after the handshake timeout.
			tm.quiet(100 * time.Millisecond)
		} else {
			tm.quiet(20 * time.Millisecond)
		}
		expectClosed(t, c)
	}
	// A client that says nothing at all is dropped by the timeout too.
	c := dial(t, tm.path)
	tm.quiet(100 * time.Millisecond)
	expectClosed(t, c)
	if n := tm.m.m.HostConnsRejected.Load(); n != 5 {
		t.Fatalf("rejected %d, want 5", n)
	}
	if len(tm.m.byFd) != 0 || len(tm.m.timers) != 0 {
		t.Fatalf("left %d fds, %d timers", len(tm.m.byFd), len(tm.m.timers))
	}
}

func listenAt(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestGuestInitiated(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	l := listenAt(t, tm.path+"_52")
	tm.send(tm.hdr(OpRequest, 1025, 52), nil)
	resp := tm.expect(OpResponse)
	if resp.h.SrcPort != 52 || resp.h.DstPort != 1025 || resp.h.BufAlloc != DefaultBufAlloc {
		t.Fatalf("response %v", resp.h)
	}
	l.SetDeadline(time.Now().Add(2 * time.Second))
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tm.send(tm.hdr(OpRW, 1025, 52), []byte("from guest"))
	if got := readN(t, c, 10); string(got) != "from guest" {
		t.Fatalf("host got %q", got)
	}
	c.Write([]byte("from host"))
	if p := tm.expect(OpRW); string(p.data) != "from host" {
		t.Fatalf("guest got %q", p.data)
	}
}

func TestGuestInitiatedNobodyListens(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	tm.send(tm.hdr(OpRequest, 1025, 53), nil)
	rst := tm.expect(OpRst)
	if rst.h.SrcPort != 53 || rst.h.DstPort != 1025 || rst.h.DstCID != testCID {
		t.Fatalf("rst %v", rst.h)
	}
	// A plain file at the path is no listener either.
	os.WriteFile(tm.path+"_54", []byte("x"), 0o600)
	tm.send(tm.hdr(OpRequest, 1026, 54), nil)
	tm.expect(OpRst)
	if tm.m.m.GuestConnsRefused.Load() != 2 || len(tm.m.conns) != 0 {
		t.Fatalf("refused %d conns %d", tm.m.m.GuestConnsRefused.Load(), len(tm.m.conns))
	}
}

func TestUnroutablePackets(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	for _, op := range []Op{OpResponse, OpShutdown, OpCreditUpdate, OpCreditRequest} {
		tm.send(tm.hdr(op, 1025, 7000), nil)
		if rst := tm.expect(OpRst); rst.h.SrcPort != 7000 || rst.h.DstPort != 1025 {
			t.Fatalf("%s: rst %v", op, rst.h)
		}
	}
	tm.send(tm.hdr(OpRW, 1025, 7000), []byte("x"))
	tm.expect(OpRst)
	// An RST is never answered, and packets for other CIDs are dropped.
	tm.send(tm.hdr(OpRst, 1025, 7000), nil)
	h := tm.hdr(OpRequest, 1025, 7000)
	h.DstCID = 4
	tm.send(h, nil)
	h = tm.hdr(OpRequest, 1025, 7000)
	h.SrcCID = 9
	tm.send(h, nil)
	tm.quiet(20 * time.Millisecond)
	// A bad type gets an RST.
	h = tm.hdr(OpRequest, 1025, 7000)
	h.Type = 2
	tm.send(h, nil)
	tm.expect(OpRst)
}

func TestRstFloodIsBounded(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	for i := 0; i < 10*maxPendingRsts; i++ {
		tm.send(tm.hdr(OpCreditUpdate, uint32(i), 7000), nil)
	}
	if len(tm.m.rxq) > maxPendingRsts {
		t.Fatalf("rx queue grew to %d", len(tm.m.rxq))
	}
	n := 0
	for {
		var h Header
		if !tm.m.recv(&h, sgList{tm.buf}) {
			break
		}
		n++
	}
	if n != maxPendingRsts || tm.m.m.RstsDropped.Load() != uint64(9*maxPendingRsts) {
		t.Fatalf("delivered %d RSTs, dropped %d", n, tm.m.m.RstsDropped.Load())
	}
}

func TestHostToGuestNeverExceedsCredit(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	tm.peerBufAlloc = 1000
	c, hostPort := tm.connectHost(52)
	payload := bytes.Repeat([]byte("0123456789"), 500) // 5000 bytes
	go c.Write(payload)
	var got []byte
	for len(got) < len(payload) {
		p, ok := tm.next()
		if !ok {
			t.Fatalf("stalled after %d bytes", len(got))
		}
		switch p.h.Op {
		case OpRW:
			got = append(got, p.data...)
			if inFlight := uint32(len(got)) - tm.fwdCnt; inFlight > tm.peerBufAlloc {
				t.Fatalf("host sent %d bytes beyond the guest's %d-byte buffer", inFlight, tm.peerBufAlloc)
			}
		case OpCreditRequest:
			// The guest's application reads everything, then says so.
			tm.fwdCnt = uint32(len(got))
			tm.send(tm.hdr(OpCreditUpdate, 52, hostPort), nil)
		default:
			t.Fatalf("unexpected %v", p.h)
		}
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload corrupted")
	}
	if tm.m.m.BytesToGuest.Load() != uint64(len(payload)) {
		t.Fatalf("counted %d bytes", tm.m.m.BytesToGuest.Load())
	}
}

func TestStalledHostReaderStopsGuestByCredit(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	c, hostPort := tm.connectHost(52)
	key := connKey{hostPort, 52}
	tm.shrinkSendBuffer(key)
	// The guest writes as Linux does: never more than its credit, which it
	// learns from every packet the host sends (starting with the REQUEST:
	// buf_alloc 64 KiB, fwd_cnt 0).
	bufAlloc, seenFwd, sent := uint32(DefaultBufAlloc), uint32(0), uint32(0)
	credit := func() uint32 { return bufAlloc - (sent - seenFwd) }
	var want []byte
	write := func() {
		for credit() > 0 {
			n := min(credit(), 4096)
			b := bytes.Repeat([]byte{byte('a' + len(want)/4096%26)}, int(n))
			tm.send(tm.hdr(OpRW, 52, hostPort), b)
			want = append(want, b...)
			sent += n
			if conn := tm.m.conns[key]; conn == nil || conn.tx.len() > DefaultBufAlloc {
				t.Fatal("connection lost, or buffered beyond its buf_alloc")
			}
		}
	}
	// Until the kernel's socket buffer is full, the host takes bytes and the
	// guest hears of it; then, with no credit left and a host that does not
	// read, the guest stays stopped (no update comes), and nothing blocks.
	for {
		write()
		p, ok := tm.nextWithin(50 * time.Millisecond)
		if !ok {
			break
		}
		if p.h.Op != OpCreditUpdate {
			t.Fatalf("unexpected %v", p.h)
		}
		seenFwd = p.h.FwdCnt
	}
	if credit() != 0 || tm.m.conns[key].tx.empty() {
		t.Fatalf("guest not stopped by credit (credit %d, buffered %d)", credit(), tm.m.conns[key].tx.len())
	}

	// The host reads again: credit updates let the guest go on.
	const total = 1 << 20
	done := make(chan []byte)
	go func() {
		b := make([]byte, total)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.ReadFull(c, b)
		done <- b[:n]
	}()
	for sent < total {
		p, ok := tm.next()
		if !ok {
			t.Fatalf("no credit update; guest saw fwd_cnt %d of %d sent", seenFwd, sent)
		}
		if p.h.Op != OpCreditUpdate {
			t.Fatalf("unexpected %v", p.h)
		}
		seenFwd = p.h.FwdCnt
		if credit() > bufAlloc {
			t.Fatalf("update claims fwd_cnt %d beyond the %d bytes sent", seenFwd, sent)
		}
		write()
	}
	// Flush the tail: the muxer writes the rest as the reader takes it.
	for len(want) > total {
		want = want[:total]
	}
	deadline := time.Now().Add(5 * time.Second)
	var got []byte
	for got == nil && time.Now().Before(deadline) {
		select {
		case got = <-done:
		default:
			tm.m.poll(time.Millisecond)
			var h Header
			for tm.m.recv(&h, sgList{tm.buf}) {
			}
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("host read %d bytes, want %d intact", len(got), len(want))
	}
}

func TestGuestOverrunningCreditIsReset(t *testing.T) {
	p := defaultParams()
	p.bufAlloc = 8192
	tm := newTestMux(t, p, 0)
	c, hostPort := tm.connectHost(52)
	tm.shrinkSendBuffer(connKey{hostPort, 52})
	chunk := make([]byte, 4096)
	for i := 0; i < 64 && tm.m.conns[connKey{hostPort, 52}] != nil && tm.m.conns[connKey{hostPort, 52}].state != stateKilled; i++ {
		tm.send(tm.hdr(OpRW, 52, hostPort), chunk)
	}
	tm.expect(OpRst)
	if len(tm.m.conns) != 0 {
		t.Fatal("overrunning connection kept")
	}
	expectClosed(t, c)
}

func TestVanishedHostClient(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	c, hostPort := tm.connectHost(52)
	c.Close()
	tm.expect(OpShutdown)
	// The guest did not see the shutdown yet and keeps writing: it gets an
	// RST, and nothing blocks.
	for i := 0; i < 4; i++ {
		tm.send(tm.hdr(OpRW, 52, hostPort), make([]byte, 4096))
	}
	tm.expect(OpRst)
	if len(tm.m.conns) != 0 || len(tm.m.byFd) != 0 {
		t.Fatal("vanished client's connection kept")
	}
}

func TestShutdownTimeoutWithoutGuestRst(t *testing.T) {
	p := defaultParams()
	p.shutdownTimeout = 30 * time.Millisecond
	tm := newTestMux(t, p, 0)
	c, _ := tm.connectHost(52)
	c.Close()
	tm.expect(OpShutdown)
	tm.expect(OpRst) // the guest never sent its RST: the timer did
	if len(tm.m.conns) != 0 {
		t.Fatal("connection kept")
	}
}

func TestManyConcurrentConnections(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	const n = 200
	clients := make([]*net.UnixConn, n)
	for i := range clients {
		clients[i] = dial(t, tm.path)
		clients[i].Write([]byte("CONNECT 52\n"))
	}
	// The guest accepts every REQUEST and echoes every byte back.
	hostPorts := map[uint32]bool{}
	echoed := 0
	done := make(chan error, n)
	for i, c := range clients {
		go func(i int, c *net.UnixConn) {
			if line := readLine(t, c); !strings.HasPrefix(line, "OK ") {
				done <- errors.New("bad OK line " + line)
				return
			}
			msg := []byte("hello from client " + strconv.Itoa(i))
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				done <- errors.New("client " + strconv.Itoa(i) + " got " + string(got))
				return
			}
			done <- nil
		}(i, c)
	}
	deadline := time.Now().Add(10 * time.Second)
	for finished := 0; finished < n; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished++
			continue
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients finished", finished, n)
		}
		tm.m.poll(time.Millisecond)
		var h Header
		for tm.m.recv(&h, sgList{tm.buf}) {
			switch h.Op {
			case OpRequest:
				hostPorts[h.SrcPort] = true
				tm.send(tm.hdr(OpResponse, h.DstPort, h.SrcPort), nil)
			case OpRW:
				echoed++
				tm.send(tm.hdr(OpRW, h.DstPort, h.SrcPort), append([]byte(nil), tm.buf[:h.Len]...))
			default:
				t.Fatalf("unexpected %v", h)
			}
		}
	}
	if len(hostPorts) != n {
		t.Fatalf("%d distinct host ports for %d connections", len(hostPorts), n)
	}
}

func TestConnectionLimit(t *testing.T) {
	tm := newTestMux(t, connParams{}, 2)
	tm.connectHost(52)
	tm.connectHost(52)
	c := dial(t, tm.path)
	c.Write([]byte("CONNECT 52\n"))
	tm.quiet(20 * time.Millisecond)
	expectClosed(t, c)
	listenAt(t, tm.path+"_60")
	tm.send(tm.hdr(OpRequest, 1025, 60), nil)
	tm.expect(OpRst)
}

func TestListenerPathHandling(t *testing.T) {
	dir := shortTempDir(t)
	// A regular file is never replaced.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := newMuxer(testCID, file, muxerOptions{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("bound over a file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("file changed")
	}
	// A live listener is not stolen.
	live := filepath.Join(dir, "live")
	listenAt(t, live)
	if _, err := newMuxer(testCID, live, muxerOptions{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("took a live socket: %v", err)
	}
	// A stale socket left by a dead VMM is replaced, and removed on close.
	stale := filepath.Join(dir, "stale")
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	unix.Bind(fd, &unix.SockaddrUnix{Name: stale})
	unix.Close(fd)
	m, err := newMuxer(testCID, stale, muxerOptions{})
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	m.close()
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("socket left after close: %v", err)
	}
}

func TestOneCreditRequestPerStall(t *testing.T) {
	tm := newTestMux(t, connParams{}, 0)
	tm.peerBufAlloc = 100
	c, hostPort := tm.connectHost(52)
	c.Write(make([]byte, 1000))
	if p := tm.expect(OpRW); p.h.Len != 100 {
		t.Fatalf("sent %d bytes against a credit of 100", p.h.Len)
	}
	tm.expect(OpCreditRequest)
	// The guest answers with unchanged credit (its application reads
	// nothing): no second request, no ping-pong.
	tm.send(tm.hdr(OpCreditUpdate, 52, hostPort), nil)
	tm.quiet(30 * time.Millisecond)
	// Its application reads: credit changes, data flows.
	tm.fwdCnt = 100
	tm.send(tm.hdr(OpCreditUpdate, 52, hostPort), nil)
	if p := tm.expect(OpRW); p.h.Len != 100 {
		t.Fatalf("sent %d bytes", p.h.Len)
	}
}

// BenchmarkMuxerRoundTrip is the host side alone: a request from a Unix
// client to the guest's packet interface and an answer back, no queues.
func BenchmarkMuxerRoundTrip(b *testing.B) {
	t := &testing.T{}
	_ = t
	path := filepath.Join(b.TempDir(), "v.sock")
	if len(path) > maxSunPath {
		dir, _ := os.MkdirTemp("", "vsk")
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "v.sock")
	}
	m, err := newMuxer(testCID, path, muxerOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.close()
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("CONNECT 52\n"))
	buf := make([]byte, 4096)
	var h Header
	next := func() Header {
		for !m.recv(&h, sgList{buf}) {
			if _, err := m.poll(time.Second); err != nil {
				b.Fatal(err)
			}
		}
		return h
	}
	req := next()
	guest := Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 52, DstPort: req.SrcPort, Type: TypeStream, Op: OpResponse, BufAlloc: 256 << 10}
	m.send(guest, nil)
	line := make([]byte, len("OK 1073741824\n"))
	io.ReadFull(c, line)
	msg := make([]byte, 64)
	ans := make([]byte, 64)
	guest.Op = OpRW
	guest.Len = 64
	var fwd uint32
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Write(msg)
		got := next()
		fwd += got.Len
		guest.FwdCnt = fwd
		m.send(guest, sgList{buf[:64]})
		io.ReadFull(c, ans)
	}
}

func TestGenerationsNeverLookLikeNotifiers(t *testing.T) {
	// Many short-lived host clients: every registration gets a new
	// generation, which must never be taken for a notifier or the listener.
	tm := newTestMux(t, connParams{}, 0)
	for i := 0; i < 600; i++ {
		c, hostPort := tm.connectHost(52)
		c.Close()
		tm.expect(OpShutdown)
		tm.send(tm.hdr(OpRst, 52, hostPort), nil)
	}
	if tm.m.m.HostConnsRejected.Load() != 0 || len(tm.m.byFd) != 0 {
		t.Fatalf("rejected %d, %d fds left", tm.m.m.HostConnsRejected.Load(), len(tm.m.byFd))
	}
}

func TestClientClosesRightAfterConnect(t *testing.T) {
	// "CONNECT 52\n", a request and close, all before the muxer looks. As in
	// Firecracker the guest is asked; its acceptance cannot be acknowledged
	// to a client that is gone, so the connection is reset, and nothing is
	// left behind.
	tm := newTestMux(t, connParams{}, 0)
	c := dial(t, tm.path)
	c.Write([]byte("CONNECT 52\nfire and forget"))
	c.Close()
	time.Sleep(10 * time.Millisecond)
	req := tm.expect(OpRequest)
	tm.send(tm.hdr(OpResponse, 52, req.h.SrcPort), nil)
	tm.expect(OpRst)
	if len(tm.m.conns) != 0 || len(tm.m.byFd) != 0 {
		t.Fatalf("left %d conns %d fds", len(tm.m.conns), len(tm.m.byFd))
	}
}
