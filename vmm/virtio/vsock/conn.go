package vsock

import (
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Flow-control and timing parameters of a connection.
const (
	// DefaultBufAlloc is the receive buffer each connection advertises to the
	// guest (buf_alloc) and therefore the most guest-to-host bytes it ever
	// holds when the host reader is slow.
	DefaultBufAlloc = 64 << 10
	// creditUpdateThreshold: when the guest believes we have less free space
	// than this, and we have more, we tell it (a CREDIT_UPDATE). Linux never
	// asks for credit, so a stale view would stall it for good.
	creditUpdateThreshold = 16 << 10
	// RequestTimeout bounds how long a host-initiated connection waits for
	// the guest's RESPONSE by default (Firecracker's value; see
	// Config.RequestTimeout), ShutdownTimeout how long a closing connection
	// waits for the last bytes to drain or for the guest's RST, and
	// HandshakeTimeout how long a host client may take to send its
	// "CONNECT <port>\n" line.
	RequestTimeout   = 2 * time.Second
	ShutdownTimeout  = 2 * time.Second
	HandshakeTimeout = 5 * time.Second
)

// connParams are the settings shared by a muxer's connections.
type connParams struct {
	bufAlloc         int
	requestTimeout   time.Duration
	shutdownTimeout  time.Duration
	handshakeTimeout time.Duration
}

func defaultParams() connParams {
	return connParams{
		bufAlloc:         DefaultBufAlloc,
		requestTimeout:   RequestTimeout,
		shutdownTimeout:  ShutdownTimeout,
		handshakeTimeout: HandshakeTimeout,
	}
}

// connState is where a connection is in its life. Half-closes are kept in
// the shutdown flags beside it, not in the state.
type connState uint8

const (
	// stateHandshake: a host client connected to the Unix socket and has
	// not sent its CONNECT line yet; no vsock packet has been exchanged.
	stateHandshake connState = iota
	// stateLocalInit: host-initiated; REQUEST pending or sent, waiting for
	// the guest's RESPONSE.
	stateLocalInit
	// statePeerInit: guest-initiated; the host socket is connected and the
	// RESPONSE is pending.
	statePeerInit
	// stateEstablished: data flows (subject to the shutdown flags).
	stateEstablished
	// stateKilled: an RST is pending; the connection is dropped once the
	// guest has it. The host socket is already closed.
	stateKilled
)

func (s connState) String() string {
	switch s {
	case stateHandshake:
		return "handshake"
	case stateLocalInit:
		return "local-init"
	case statePeerInit:
		return "peer-init"
	case stateEstablished:
		return "established"
	case stateKilled:
		return "killed"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Control packets a connection owes the guest, highest priority first.
const (
	pendRst uint8 = 1 << iota
	pendResponse
	pendRequest
	pendShutdown
	pendCreditRequest
	pendCreditUpdate
)

// connKey identifies a connection: host (local) port and guest (peer) port.
type connKey struct {
	local, peer uint32
}

// conn is one guest↔host stream. It is owned by the muxer's worker and
// never touched concurrently. Its counters wrap, as the protocol's do.
type conn struct {
	key connKey
	p   *connParams
	fd  int // host socket; -1 once closed
	// regFd and gen identify the epoll registration (the fd number may be
	// reused by a new socket once this one is closed).
	regFd int
	gen   int32
	state connState
	// pending is the set of control packets owed to the guest.
	pending uint8
	// localShut: shutdown flags sent to the guest (ShutdownSend: the host
	// will send no more; ShutdownRcv: the host receives no more).
	// peerShut: flags the guest sent us, accumulated.
	localShut, peerShut uint32
	// readable: the host socket may have bytes (or EOF) to read; cleared
	// when a read would block. The socket is polled edge-triggered, so this
	// flag is the level.
	readable bool
	// hostEOF: the host shut its write side (EPOLLRDHUP): a read will
	// return 0 once the data before it is taken, and no new edge comes.
	hostEOF bool
	// hostGone: the host end closed completely (EPOLLHUP).
	hostGone bool
	// hostWriteShut: the host socket's write side was shut after the guest
	// said it will send no more.
	hostWriteShut bool
	// creditRequested: a CREDIT_REQUEST went out and no guest packet came
	// since; another would only waste rx buffers.
	creditRequested bool

	tx txBuf
	// Our side of flow control: bufAlloc is advertised; fwdCnt counts bytes
	// delivered to the host socket; lastFwdCntSent is the fwdCnt the guest
	// last saw.
	bufAlloc, fwdCnt, lastFwdCntSent uint32
	// The guest's side: its buffer, its forwarded count, and rxCnt, the
	// bytes we have sent it.
	peerBufAlloc, peerFwdCnt, rxCnt uint32

	// expiry is when the connection is killed unless it progresses; zero
	// when no timer is armed. timerAt and timerIdx are the muxer's copy of
	// it in its heap (-1: not in the heap).
	expiry   time.Time
	timerAt  time.Time
	timerIdx int
	// queued: the connection is in the muxer's rx queue.
	queued bool
}

func newConn(p *connParams, key connKey, fd int, state connState) *conn {
	c := &conn{key: key, p: p, fd: fd, regFd: -1, state: state, tx: newTxBuf(p.bufAlloc), bufAlloc: uint32(p.bufAlloc), timerIdx: -1}
	switch state {
	case stateLocalInit:
		c.pending = pendRequest
	case statePeerInit:
		c.pending = pendResponse
	}
	return c
}

// peerCredit is how many bytes the guest can take now. A guest that reports
// having forwarded more than it received (or a buffer smaller than what is
// in flight) gets zero, never a wrapped-around huge credit.
func (c *conn) peerCredit() uint32 {
	inFlight := c.rxCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// canSendData: the state lets host bytes flow to the guest.
func (c *conn) canSendData() bool {
	return c.state == stateEstablished && c.peerShut&ShutdownRcv == 0 && c.localShut&ShutdownSend == 0
}

// wantsRx tells whether recv would produce a packet now.
func (c *conn) wantsRx() bool {
	if c.pending != 0 {
		return true
	}
	if !c.readable || !c.canSendData() {
		return false
	}
	return c.peerCredit() > 0 || !c.creditRequested
}

// guestNeedsCredit: the guest thinks our buffer is nearly full while it is
// not, so it may be waiting for us.
func (c *conn) guestNeedsCredit() bool {
	if c.fwdCnt == c.lastFwdCntSent {
		return false
	}
	received := c.fwdCnt + uint32(c.tx.len())
	guestSeenFree := int64(c.bufAlloc) - int64(received-c.lastFwdCntSent)
	return guestSeenFree < creditUpdateThreshold
}

// kill schedules an RST and closes the host side; anything buffered for the
// host is forfeit, as an RST means.
func (c *conn) kill() {
	c.state = stateKilled
	c.pending = pendRst
	c.tx.clear()
	c.readable = false
	c.closeHost()
}

// finish ends a connection cleanly: both sides are done, so an RST (which
// completes a vsock close) goes to the guest and the host socket closes,
// which its reader sees as EOF.
func (c *conn) finish() { c.kill() }

func (c *conn) closeHost() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// fillHeader sets the fields every packet to the guest carries, including
// our credit, which the guest now knows.
func (c *conn) fillHeader(h *Header, guestCID uint64) {
	*h = Header{
		SrcCID:   HostCID,
		DstCID:   guestCID,
		SrcPort:  c.key.local,
		DstPort:  c.key.peer,
		Type:     TypeStream,
		BufAlloc: c.bufAlloc,
		FwdCnt:   c.fwdCnt,
	}
	c.lastFwdCntSent = c.fwdCnt
}

// recv builds the next packet for the guest into h, reading payload from the
// host socket straight into data (guest memory). It reports false when it
// has nothing to send; the header is then meaningless.
func (c *conn) recv(h *Header, guestCID uint64, data sgList, now time.Time) bool {
	switch {
	case c.pending&pendRst != 0:
		c.pending = 0
		c.fillHeader(h, guestCID)
		h.Op = OpRst
		h.BufAlloc, h.FwdCnt = 0, 0
		return true
	case c.pending&pendResponse != 0:
		c.pending &^= pendResponse
		c.state = stateEstablished
		c.fillHeader(h, guestCID)
		h.Op = OpResponse
		return true
	case c.pending&pendRequest != 0:
		c.pending &^= pendRequest
		c.fillHeader(h, guestCID)
		h.Op = OpRequest
		c.arm(now, c.p.requestTimeout)
		return true
	case c.pending&pendShutdown != 0:
		c.pending &^= pendShutdown
		c.fillHeader(h, guestCID)
		h.Op = OpShutdown
		h.Flags = c.localShut
		return true
	}
	if c.readable && c.canSendData() {
		if ok := c.recvData(h, guestCID, data, now); ok {
			return true
		}
	}
	if c.pending&pendCreditRequest != 0 {
		c.pending &^= pendCreditRequest
		c.fillHeader(h, guestCID)
		h.Op = OpCreditRequest
		return true
	}
	if c.pending&pendCreditUpdate != 0 {
		c.pending &^= pendCreditUpdate
		c.fillHeader(h, guestCID)
		h.Op = OpCreditUpdate
		return true
	}
	return false
}

// recvData reads host bytes into an RW packet, or turns EOF into a SHUTDOWN.
// The socket is polled edge-triggered, so readable is cleared only when a
// read shows the socket drained (a short read or EAGAIN): a new edge comes
// with the next bytes.
func (c *conn) recvData(h *Header, guestCID uint64, data sgList, now time.Time) bool {
	credit := int(c.peerCredit())
	if credit == 0 {
		if !c.creditRequested {
			c.creditRequested = true
			c.pending |= pendCreditRequest
		}
		return false
	}
	if credit > MaxPayload {
		credit = MaxPayload
	}
	total, eof, drained := 0, false, false
	for _, b := range data {
		if total == credit {
			break
		}
		if len(b) > credit-total {
			b = b[:credit-total]
		}
		if len(b) == 0 {
			continue
		}
		n, err := sockRead(c.fd, b)
		total += n
		if err != nil {
			if !wouldBlock(err) {
				if total > 0 {
					// Deliver what was read; the error shows again next time.
					break
				}
				c.kill()
				return c.recvRst(h, guestCID)
			}
			drained = true
			break
		}
		if n == 0 {
			eof = total == 0
			drained = true
			break
		}
		if n < len(b) {
			drained = true
			break
		}
	}
	if drained && (!c.hostEOF || eof) {
		c.readable = false
	}
	if total > 0 {
		c.fillHeader(h, guestCID)
		h.Op = OpRW
		h.Len = uint32(total)
		c.rxCnt += uint32(total)
		return true
	}
	if !eof {
		// Drained, or no payload room in this buffer.
		return false
	}
	// EOF: the host will send no more; if it is gone altogether, it will not
	// receive either.
	flags := ShutdownSend
	if c.hostGone {
		flags |= ShutdownRcv
	}
	if flags&^c.localShut == 0 {
		return false
	}
	c.localShut |= flags
	c.fillHeader(h, guestCID)
	h.Op = OpShutdown
	h.Flags = c.localShut
	if c.localShut == shutdownBoth {
		// Wait for the guest's RST; kill after the timeout.
		c.arm(now, c.p.shutdownTimeout)
	}
	return true
}

func (c *conn) recvRst(h *Header, guestCID uint64) bool {
	c.pending = 0
	c.fillHeader(h, guestCID)
	h.Op = OpRst
	h.BufAlloc, h.FwdCnt = 0, 0
	return true
}

func (c *conn) arm(now time.Time, d time.Duration) { c.expiry = now.Add(d) }
func (c *conn) disarm()                            { c.expiry = time.Time{} }

// send absorbs one guest packet (already checked by CheckTx and routed to
// this connection; RSTs are handled by the muxer). data holds exactly h.Len
// payload bytes in guest memory. It reports whether the guest's RESPONSE
// just established a host-initiated connection, in which case the muxer
// owes the host "OK <port>\n".
func (c *conn) send(h Header, data sgList, now time.Time) (established bool) {
	if c.state == stateKilled {
		return false
	}
	// Every packet carries the guest's credit. A CREDIT_REQUEST is sent once
	// per stall: only a change of credit allows another, or a guest whose
	// application is not reading would be asked again and again.
	if h.BufAlloc != c.peerBufAlloc || h.FwdCnt != c.peerFwdCnt {
		c.creditRequested = false
	}
	c.peerBufAlloc = h.BufAlloc
	c.peerFwdCnt = h.FwdCnt

	switch h.Op {
	case OpResponse:
		if c.state != stateLocalInit {
			return false
		}
		c.state = stateEstablished
		c.disarm()
		return true
	case OpRW:
		if c.state != stateEstablished || c.peerShut&ShutdownSend != 0 {
			// Data before the handshake or after the guest promised to
			// stop: the two ends disagree.
			c.kill()
			return false
		}
		if h.Len == 0 {
			return false
		}
		c.forward(data)
		if c.state == stateKilled {
			return false
		}
		if c.guestNeedsCredit() {
			c.pending |= pendCreditUpdate
		}
	case OpShutdown:
		if c.state == stateLocalInit || c.state == statePeerInit {
			// The guest gives up before the handshake completed.
			c.kill()
			return false
		}
		c.peerShut |= h.Flags & shutdownBoth
		c.afterPeerShutdown(now)
	case OpCreditUpdate:
		// Credit taken above.
	case OpCreditRequest:
		c.pending |= pendCreditUpdate
	case OpRequest:
		// A REQUEST for a connection that exists: the ends disagree about
		// it; start over.
		c.kill()
	}
	return false
}

// afterPeerShutdown applies the guest's accumulated shutdown flags once the
// buffered bytes are out.
func (c *conn) afterPeerShutdown(now time.Time) {
	if c.peerShut&ShutdownSend != 0 && c.tx.empty() && !c.hostWriteShut && c.fd >= 0 {
		// Pass the guest's EOF on, so that a host reader waiting for the end
		// of an answer gets it.
		unix.Shutdown(c.fd, unix.SHUT_WR)
		c.hostWriteShut = true
	}
	if c.peerShut == shutdownBoth {
		if c.tx.empty() {
			c.finish()
			return
		}
		if c.expiry.IsZero() {
			c.arm(now, c.p.shutdownTimeout)
		}
	}
}

// forward writes guest bytes to the host socket, buffering what it does not
// take. A guest that sends beyond its credit, or a host socket that failed,
// kills the connection.
func (c *conn) forward(data sgList) {
	i := 0
	if c.tx.empty() {
		for ; i < len(data); i++ {
			b := data[i]
			n, err := sockWrite(c.fd, b)
			c.fwdCnt += uint32(n)
			if err != nil && !wouldBlock(err) {
				c.kill()
				return
			}
			if n < len(b) {
				data[i] = b[n:]
				break
			}
		}
	}
	for ; i < len(data); i++ {
		if err := c.tx.push(data[i]); err != nil {
			c.kill()
			return
		}
	}
}

// flush writes buffered bytes to the host socket when it has room again.
func (c *conn) flush(now time.Time) {
	for !c.tx.empty() {
		a, _ := c.tx.segments()
		n, err := sockWrite(c.fd, a)
		c.tx.consume(n)
		c.fwdCnt += uint32(n)
		if err != nil {
			if !wouldBlock(err) {
				c.kill()
				return
			}
			break
		}
		if n < len(a) {
			break
		}
	}
	if c.tx.empty() && c.peerShut != 0 {
		c.afterPeerShutdown(now)
		if c.state == stateKilled {
			return
		}
	}
	if c.guestNeedsCredit() {
		c.pending |= pendCreditUpdate
	}
}

// hostEvent applies epoll readiness of the host socket.
func (c *conn) hostEvent(events uint32, now time.Time) {
	if c.fd < 0 {
		return
	}
	if events&unix.EPOLLERR != 0 {
		c.kill()
		return
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		c.readable = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		c.hostEOF = true
	}
	if events&unix.EPOLLHUP != 0 && !c.hostGone {
		c.hostGone = true
		if c.state != stateEstablished || c.peerShut&ShutdownRcv != 0 {
			// The host left before the handshake completed, or the guest
			// reads no more: nothing can flow either way.
			c.kill()
			return
		}
		if c.localShut&ShutdownSend != 0 {
			// Its EOF was passed on already; now it cannot receive either.
			c.localShut |= ShutdownRcv
			c.pending |= pendShutdown
			c.arm(now, c.p.shutdownTimeout)
		}
	}
	if events&unix.EPOLLOUT != 0 && !c.tx.empty() {
		c.flush(now)
	}
}

// expired handles the connection's timer.
func (c *conn) expired() { c.kill() }
