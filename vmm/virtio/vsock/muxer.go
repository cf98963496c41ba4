package vsock

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of one muxer, so that neither the guest nor host clients can make
// it hold unbounded memory or file descriptors.
const (
	// DefaultMaxConns bounds connections (host sockets), handshakes included.
	DefaultMaxConns = 1024
	// maxPendingRsts bounds RSTs owed for packets that match no connection;
	// beyond it they are dropped (the guest's own timeouts then apply).
	maxPendingRsts = 256
	// maxConnectLine is the longest "CONNECT <port>\n" line accepted.
	maxConnectLine = 32
	// localPortFirst..localPortLast is where host-initiated connections get
	// their host-side port, as in Firecracker (the first is "OK 1073741824").
	localPortFirst = 1 << 30
	localPortLast  = 1<<31 - 1
	// acceptBatch bounds accepts per wake-up so that a flood of host
	// clients cannot starve the queues.
	acceptBatch = 32
)

// Epoll registrations are told apart by the event's Pad field: the
// listener is -1, notifier token t is -2-t, and a connection has its
// generation (≥ genFirst), so that a stale event for a closed fd whose
// number was reused is recognised.
const (
	tagListener int32 = -1
	tagNotifier int32 = -2
	genFirst    int32 = 1
)

// Metrics counts what the muxer did; the device exposes a snapshot.
type Metrics struct {
	ConnsAdded, ConnsRemoved         atomic.Uint64
	GuestConnsRefused                atomic.Uint64 // guest REQUEST with nobody at <uds>_<port>
	HostConnsRejected                atomic.Uint64 // bad CONNECT line, limit, or handshake timeout
	PacketsDropped                   atomic.Uint64 // guest packets not addressed to us
	RstsSent, RstsDropped            atomic.Uint64
	ConnsKilled                      atomic.Uint64 // RSTs of live connections (errors, timeouts, overruns)
	BytesToHost, BytesToGuest        atomic.Uint64
	PacketsFromGuest, PacketsToGuest atomic.Uint64
}

// rxItem is an entry of the muxer's rx queue: a connection with something to
// say, or an RST for a packet that matched none.
type rxItem struct {
	key connKey
	rst bool
}

// muxer multiplexes guest vsock connections onto host Unix sockets. It is
// owned by one goroutine (the device worker); nothing in it is locked.
type muxer struct {
	guestCID uint64
	udsPath  string
	udsIno   uint64 // inode of the socket we bound, to remove only our own
	listenFd int
	ep       int
	p        connParams
	maxConns int
	log      *slog.Logger
	m        *Metrics

	conns    map[connKey]*conn
	byFd     map[int]*conn // every host socket, handshakes included
	rxq      []rxItem      // FIFO; head at rxHead
	rxHead   int
	nRsts    int
	timers   timerHeap
	lastPort uint32
	ports    map[uint32]struct{}
	gen      int32
	events   [64]unix.EpollEvent
	okLine   [32]byte
	// holding: host-initiated REQUESTs are not sent yet (after a transport
	// reset, until the guest handled it); held lists their connections.
	holding bool
	held    []connKey
}

type muxerOptions struct {
	params   connParams
	maxConns int
	log      *slog.Logger
	metrics  *Metrics
}

// newMuxer binds the host socket at udsPath and sets up the epoll set.
func newMuxer(guestCID uint64, udsPath string, o muxerOptions) (*muxer, error) {
	if o.maxConns <= 0 {
		o.maxConns = DefaultMaxConns
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.metrics == nil {
		o.metrics = new(Metrics)
	}
	if o.params.bufAlloc == 0 {
		o.params = defaultParams()
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("vsock: epoll_create1: %w", err)
	}
	lfd, err := listenUnix(udsPath)
	if err != nil {
		unix.Close(ep)
		return nil, err
	}
	m := &muxer{
		guestCID: guestCID, udsPath: udsPath, listenFd: lfd, ep: ep,
		p: o.params, maxConns: o.maxConns, log: o.log, m: o.metrics,
		conns: make(map[connKey]*conn), byFd: make(map[int]*conn),
		lastPort: localPortFirst - 1, ports: make(map[uint32]struct{}), gen: genFirst,
	}
	var st unix.Stat_t
	if err := unix.Stat(udsPath, &st); err == nil {
		m.udsIno = st.Ino
	}
	if err := m.epollAdd(lfd, unix.EPOLLIN, tagListener); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

func (m *muxer) epollAdd(fd int, events uint32, tag int32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: tag}
	if err := unix.EpollCtl(m.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("vsock: epoll add fd %d: %w", fd, err)
	}
	return nil
}

// addNotifier puts an outside fd (a queue's eventfd, a stop eventfd) into
// the same epoll set; poll reports it by its token (0..63).
func (m *muxer) addNotifier(fd int, token uint) error {
	if token > 63 {
		return fmt.Errorf("vsock: notifier token %d out of range", token)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: tagNotifier - int32(token)}
	if err := unix.EpollCtl(m.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("vsock: epoll add notifier fd %d: %w", fd, err)
	}
	return nil
}

// removeNotifier takes an outside fd out of the epoll set.
func (m *muxer) removeNotifier(fd int) {
	unix.EpollCtl(m.ep, unix.EPOLL_CTL_DEL, fd, nil)
}

// poll waits up to timeout (negative: no limit) for host sockets, timers
// and notifiers, handles the socket events and timers, and returns the
// tokens of the notifiers that fired.
func (m *muxer) poll(timeout time.Duration) (uint64, error) {
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	if next := m.timers.next(); !next.IsZero() {
		d := time.Until(next)
		if d < 0 {
			d = 0
		}
		if t := int((d + time.Millisecond - 1) / time.Millisecond); ms < 0 || t < ms {
			ms = t
		}
	}
	n, err := unix.EpollWait(m.ep, m.events[:], ms)
	if err != nil {
		if err == unix.EINTR {
			return 0, nil
		}
		return 0, fmt.Errorf("vsock: epoll_wait: %w", err)
	}
	now := time.Now()
	var fired uint64
	for i := 0; i < n; i++ {
		ev := m.events[i]
		switch tag := ev.Pad; {
		case tag == tagListener:
			m.acceptHost(now)
		case tag <= tagNotifier:
			fired |= 1 << uint(tagNotifier-tag)
		default:
			c := m.byFd[int(ev.Fd)]
			if c == nil || c.gen != tag {
				continue // stale: the fd was closed in this batch
			}
			if c.state == stateHandshake {
				m.readConnectLine(c, ev.Events, now)
			} else {
				c.hostEvent(ev.Events, now)
			}
			m.after(c)
		}
	}
	m.expire(now)
	return fired, nil
}

// expire kills the connections whose timers ran out.
func (m *muxer) expire(now time.Time) {
	for {
		c := m.timers.popExpired(now)
		if c == nil {
			return
		}
		if c.expiry.IsZero() || c.expiry.After(now) {
			m.after(c) // re-armed since; put it back
			continue
		}
		c.disarm()
		if c.state == stateHandshake {
			m.m.HostConnsRejected.Add(1)
			m.drop(c)
			continue
		}
		m.log.Debug("vsock: connection timed out", "state", c.state, "local", c.key.local, "peer", c.key.peer)
		m.m.ConnsKilled.Add(1)
		c.expired()
		m.after(c)
	}
}

// after brings the muxer's indexes in line with a connection that may have
// changed: its fd registration, timer, rx queue entry, and existence.
func (m *muxer) after(c *conn) {
	if !m.settle(c) {
		return
	}
	if !c.queued && c.wantsRx() {
		if m.holding && c.state == stateLocalInit && c.pending == pendRequest {
			c.queued = true // in held, not in rxq
			m.held = append(m.held, c.key)
			return
		}
		c.queued = true
		m.rxq = append(m.rxq, rxItem{key: c.key})
	}
}

// holdRequests starts or ends holding host-initiated REQUESTs; at the end
// the held ones are queued in arrival order.
func (m *muxer) holdRequests(on bool) {
	m.holding = on
	if on {
		return
	}
	for _, k := range m.held {
		if c := m.conns[k]; c != nil && c.queued {
			m.rxq = append(m.rxq, rxItem{key: k})
		}
	}
	m.held = m.held[:0]
}

// settle updates everything but the rx queue; it reports false when the
// connection is gone.
func (m *muxer) settle(c *conn) bool {
	if c.fd < 0 && c.regFd >= 0 {
		m.unindexFd(c)
	}
	if c.state == stateKilled && c.pending == 0 {
		// Its RST went out: the connection is over.
		m.remove(c)
		return false
	}
	m.timers.sync(c)
	return true
}

// unindexFd forgets c's fd registration (closing the fd took it out of the
// epoll set); the number may already belong to a new socket.
func (m *muxer) unindexFd(c *conn) {
	if c.regFd >= 0 && m.byFd[c.regFd] == c {
		delete(m.byFd, c.regFd)
	}
	c.regFd = -1
}

// remove forgets a connection and closes its host socket.
func (m *muxer) remove(c *conn) {
	c.closeHost()
	m.unindexFd(c)
	m.timers.remove(c)
	if cur, ok := m.conns[c.key]; ok && cur == c {
		delete(m.conns, c.key)
		delete(m.ports, c.key.local)
		m.m.ConnsRemoved.Add(1)
	}
	c.state = stateKilled
	c.pending = 0
}

// drop closes a handshake that never became a connection.
func (m *muxer) drop(c *conn) {
	c.state, c.pending = stateKilled, 0
	c.disarm()
	c.closeHost()
	m.unindexFd(c)
	m.timers.remove(c)
}

// register adds a host socket to the epoll set, edge-triggered: readiness
// is kept in the connection's flags, so no epoll_ctl is needed per packet.
func (m *muxer) register(c *conn) error {
	m.gen++
	if m.gen < genFirst { // wrapped
		m.gen = genFirst
	}
	c.gen = m.gen
	if err := m.epollAdd(c.fd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, c.gen); err != nil {
		return err
	}
	c.regFd = c.fd
	m.byFd[c.fd] = c
	return nil
}

// acceptHost takes new host clients from the listening socket.
func (m *muxer) acceptHost(now time.Time) {
	for i := 0; i < acceptBatch; i++ {
		fd, _, err := unix.Accept4(m.listenFd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			if err != unix.EAGAIN && err != unix.EINTR && err != unix.ECONNABORTED {
				m.log.Warn("vsock: accept on host socket failed", "path", m.udsPath, "err", err)
			}
			if err == unix.EAGAIN {
				return
			}
			continue
		}
		if len(m.byFd) >= m.maxConns {
			m.m.HostConnsRejected.Add(1)
			m.log.Warn("vsock: connection limit reached; refusing a host client", "limit", m.maxConns)
			unix.Close(fd)
			continue
		}
		c := newConn(&m.p, connKey{}, fd, stateHandshake)
		if err := m.register(c); err != nil {
			m.log.Warn("vsock: cannot poll a host client", "err", err)
			unix.Close(fd)
			continue
		}
		c.arm(now, m.p.handshakeTimeout)
		m.timers.sync(c)
	}
	// More may be waiting: the listener is level-triggered, so epoll says so.
}

// readConnectLine reads a host client's "CONNECT <port>\n" without taking
// any byte past the newline, which belongs to the stream.
func (m *muxer) readConnectLine(c *conn, events uint32, now time.Time) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
		return // the writable edge every new registration gets
	}
	var buf [maxConnectLine]byte
	n, _, err := unix.Recvfrom(c.fd, buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err != nil {
		if wouldBlock(err) || err == unix.EINTR {
			if events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				m.rejectHost(c, "closed before CONNECT")
			}
			return
		}
		m.rejectHost(c, err.Error())
		return
	}
	if n == 0 {
		m.rejectHost(c, "closed before CONNECT")
		return
	}
	nl := bytes.IndexByte(buf[:n], '\n')
	if nl < 0 {
		if n == len(buf) {
			m.rejectHost(c, "CONNECT line too long")
		} else if events&(unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
			m.rejectHost(c, "closed in the middle of the CONNECT line")
		}
		return // wait for the rest of the line
	}
	port, perr := parseConnect(buf[:nl])
	if _, err := sockRead(c.fd, buf[:nl+1]); err != nil {
		m.rejectHost(c, err.Error())
		return
	}
	if perr != nil {
		m.rejectHost(c, perr.Error())
		return
	}
	if len(m.conns) >= m.maxConns {
		m.rejectHost(c, "connection limit reached")
		return
	}
	local, ok := m.allocPort(port)
	if !ok {
		m.rejectHost(c, "no free host port")
		return
	}
	c.key = connKey{local: local, peer: port}
	c.state = stateLocalInit
	c.pending = pendRequest
	c.disarm()
	// Bytes the client sent right after the line wait in the socket; they
	// flow once the guest accepts.
	c.readable = n > nl+1 || events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0
	c.hostEOF = events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0
	c.hostGone = events&unix.EPOLLHUP != 0
	m.conns[c.key] = c
	m.m.ConnsAdded.Add(1)
}

func (m *muxer) rejectHost(c *conn, why string) {
	m.m.HostConnsRejected.Add(1)
	m.log.Debug("vsock: rejecting host client", "reason", why)
	m.drop(c)
}

var errBadConnect = errors.New(`vsock: expected "CONNECT <port>\n"`)

// parseConnect reads the port of a CONNECT line (without its newline). The
// verb is case-insensitive and a trailing CR is allowed, as in Firecracker.
func parseConnect(line []byte) (uint32, error) {
	line = bytes.TrimRight(line, "\r")
	verb, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || !bytes.EqualFold(verb, []byte("CONNECT")) {
		return 0, errBadConnect
	}
	rest = bytes.TrimSpace(rest)
	port, err := strconv.ParseUint(string(rest), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: bad port %q", errBadConnect, rest)
	}
	return uint32(port), nil
}

// allocPort picks the next free host-side port for a connection to the
// guest's peer port, round-robin over [2^30, 2^31).
func (m *muxer) allocPort(peer uint32) (uint32, bool) {
	for i := 0; i < m.maxConns+1; i++ {
		m.lastPort++
		if m.lastPort > localPortLast || m.lastPort < localPortFirst {
			m.lastPort = localPortFirst
		}
		if _, used := m.ports[m.lastPort]; used {
			continue
		}
		if _, used := m.conns[connKey{local: m.lastPort, peer: peer}]; used {
			continue
		}
		m.ports[m.lastPort] = struct{}{}
		return m.lastPort, true
	}
	return 0, false
}

// send takes one packet from the guest's tx queue. data holds the payload
// bytes that follow the header in the descriptor chain (possibly more than
// h.Len); avail is their total.
func (m *muxer) send(h Header, data sgList) {
	m.m.PacketsFromGuest.Add(1)
	verdict, why := CheckTx(h, m.guestCID, data.size())
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	c := m.conns[key]
	switch verdict {
	case Drop:
		m.m.PacketsDropped.Add(1)
		m.log.Debug("vsock: dropping guest packet", "reason", why, "hdr", h)
		return
	case Reset:
		m.log.Debug("vsock: resetting on bad guest packet", "reason", why, "hdr", h)
		if c != nil {
			m.m.ConnsKilled.Add(1)
			c.kill()
			m.after(c)
			return
		}
		m.queueRst(key)
		return
	}
	if c == nil {
		switch h.Op {
		case OpRequest:
			m.guestConnect(h)
		case OpRst:
		default:
			m.queueRst(key)
		}
		return
	}
	if h.Op == OpRst {
		m.remove(c)
		return
	}
	if h.Op == OpRW {
		data = data.limit(int(h.Len))
		m.m.BytesToHost.Add(uint64(h.Len))
	}
	before := c.state
	if c.send(h, data, time.Now()) {
		m.ackHost(c)
	}
	if before != stateKilled && c.state == stateKilled {
		m.m.ConnsKilled.Add(1)
	}
	m.after(c)
}

// ackHost tells a host client that the guest accepted: "OK <hostport>\n".
func (m *muxer) ackHost(c *conn) {
	line := append(m.okLine[:0], "OK "...)
	line = strconv.AppendUint(line, uint64(c.key.local), 10)
	line = append(line, '\n')
	n, err := sockWrite(c.fd, line)
	if err != nil || n != len(line) {
		// A fresh socket that cannot take a dozen bytes is broken.
		m.log.Debug("vsock: cannot acknowledge host client", "err", err)
		c.kill()
	}
}

// guestConnect opens a guest-initiated connection to <uds>_<port>, or owes
// the guest an RST when nobody listens there.
func (m *muxer) guestConnect(h Header) {
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	if len(m.byFd) >= m.maxConns {
		m.log.Warn("vsock: connection limit reached; refusing a guest connection", "limit", m.maxConns)
		m.m.GuestConnsRefused.Add(1)
		m.queueRst(key)
		return
	}
	path := m.udsPath + "_" + strconv.FormatUint(uint64(h.DstPort), 10)
	fd, err := connectUnix(path)
	if err != nil {
		m.m.GuestConnsRefused.Add(1)
		m.log.Debug("vsock: guest connection refused", "path", path, "err", err)
		m.queueRst(key)
		return
	}
	c := newConn(&m.p, key, fd, statePeerInit)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	if err := m.register(c); err != nil {
		unix.Close(fd)
		m.queueRst(key)
		return
	}
	m.conns[key] = c
	m.ports[key.local] = struct{}{}
	m.m.ConnsAdded.Add(1)
	m.after(c)
}

func (m *muxer) queueRst(key connKey) {
	if m.nRsts >= maxPendingRsts {
		m.m.RstsDropped.Add(1)
		return
	}
	m.nRsts++
	m.rxq = append(m.rxq, rxItem{key: key, rst: true})
}

// hasRx tells whether recv has something for the guest.
func (m *muxer) hasRx() bool { return m.rxHead < len(m.rxq) }

func (m *muxer) popRx() rxItem {
	it := m.rxq[m.rxHead]
	m.rxHead++
	if m.rxHead == len(m.rxq) {
		m.rxq, m.rxHead = m.rxq[:0], 0
	} else if m.rxHead > 1024 && m.rxHead*2 > len(m.rxq) {
		n := copy(m.rxq, m.rxq[m.rxHead:])
		m.rxq, m.rxHead = m.rxq[:n], 0
	}
	return it
}

// recv fills the next packet for the guest: its header into h and its
// payload into data (the rx buffer's room after the header). It reports
// false when nothing is pending. Connections take turns.
func (m *muxer) recv(h *Header, data sgList) bool {
	now := time.Now()
	for m.hasRx() {
		it := m.popRx()
		if it.rst {
			m.nRsts--
			*h = Header{SrcCID: HostCID, DstCID: m.guestCID, SrcPort: it.key.local, DstPort: it.key.peer, Type: TypeStream, Op: OpRst}
			m.m.RstsSent.Add(1)
			m.m.PacketsToGuest.Add(1)
			return true
		}
		c := m.conns[it.key]
		if c == nil || !c.queued {
			continue
		}
		c.queued = false
		if !c.recv(h, m.guestCID, data, now) {
			// Nothing after all (drained, or no room in this buffer): not
			// queued again now, or a buffer too small for anything would
			// spin here; the next event or guest packet puts it back.
			m.settle(c)
			continue
		}
		m.m.PacketsToGuest.Add(1)
		if h.Op == OpRst {
			m.m.RstsSent.Add(1)
		}
		if h.Op == OpRW {
			m.m.BytesToGuest.Add(uint64(h.Len))
		}
		m.after(c)
		return true
	}
	return false
}

// resetConns ends every connection and handshake without telling the guest
// (its driver was reset), keeping the listener.
func (m *muxer) resetConns() {
	for _, c := range m.byFd {
		c.closeHost()
	}
	for _, c := range m.conns {
		c.closeHost()
	}
	m.byFd, m.conns = map[int]*conn{}, map[connKey]*conn{}
	m.ports = map[uint32]struct{}{}
	m.rxq, m.rxHead, m.nRsts = m.rxq[:0], 0, 0
	m.timers = m.timers[:0]
	m.held = m.held[:0]
}

// close shuts every host socket and the listener, and removes the socket
// file if it is still the one this muxer bound.
func (m *muxer) close() {
	for _, c := range m.byFd {
		c.closeHost()
	}
	for _, c := range m.conns {
		c.closeHost()
	}
	m.byFd, m.conns = map[int]*conn{}, map[connKey]*conn{}
	if m.listenFd >= 0 {
		unix.Close(m.listenFd)
		m.listenFd = -1
		var st unix.Stat_t
		if err := unix.Lstat(m.udsPath, &st); err == nil && st.Ino == m.udsIno && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			os.Remove(m.udsPath)
		}
	}
	if m.ep >= 0 {
		unix.Close(m.ep)
		m.ep = -1
	}
}
