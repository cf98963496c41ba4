/*
 * virtio-vsock (virtio 1.2 §5.10) for the probe: stream sockets to the
 * host (CID 2) with credit-based flow control, listeners that echo or
 * serve the guest agent protocol (guest/agent/README.md), guest-initiated
 * connections, and VIRTIO_VSOCK_EVENT_TRANSPORT_RESET after a restore.
 *
 * Everything is polled from the command loop: while the serial console is
 * idle, vsock_idle spins on the rings for a while after each packet (ring
 * 3 is native, so a spin costs no exits) and then sleeps until the
 * device's interrupt, a PIC line the wait gate acknowledges.
 */
#include <stddef.h>
#include <stdint.h>

#include "probe.h"
#include "virtio.h"

#define HOST_CID	2
#define HDR		44
#define TYPE_STREAM	1

#define OP_REQUEST	1
#define OP_RESPONSE	2
#define OP_RST		3
#define OP_SHUTDOWN	4
#define OP_RW		5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUT_RCV	1
#define SHUT_SEND	2
#define SHUT_BOTH	3

#define EVENT_TRANSPORT_RESET 0

#define RXQ		0
#define TXQ		1
#define EVQ		2

/* Buffers in the device's DMA memory. */
#define NBUF		32
#define BUF		4096
#define MAX_PAYLOAD	(BUF - HDR)
#define RX_OFF		0
#define TX_OFF		(RX_OFF + NBUF * BUF)
#define EV_OFF		(TX_OFF + NBUF * BUF)
#define CAP_OUT		16384
#define CAP_ERR		4096
#define CAP_OFF		(EV_OFF + 4096)
#define NCONN		8
#define CONN_BUF	(68 * 1024)	/* an agent request: 8 + 65536 bytes */
#define CONN_OFF	(CAP_OFF + CAP_OUT + CAP_ERR)
#define VSOCK_MEM	(CONN_OFF + NCONN * CONN_BUF)

/* Each connection advertises a 64 KiB receive buffer. An echo
 * connection's bytes stay in it until they are sent back, so that much
 * is all the host may have in flight. */
#define RING		65536
#define BUF_ALLOC	65536

/*
 * Spin this long after the last packet before sleeping (TSC ticks: ~0.2
 * ms at 2.3 GHz). Not longer: on a busy host the spinning vCPU thread
 * holds the CPU the VMM's threads need to answer it, and they wait until
 * the spin ends; not never: waking from the wait gate costs emulated
 * ring-0 instructions. "vsock spin TICKS" changes it. While packets flow, the UART is looked at only right after
 * one was handled (when the answer is out and the host is busy) and at
 * most every UART_TICKS (~0.7 ms): each look is an exit to the VMM's
 * userspace, which costs tens of microseconds on the vCPU thread. A quiet
 * spin does not look at all: the sleep that follows wakes on the UART.
 */
#ifndef SPIN_TICKS
#define SPIN_TICKS	500000ull
#endif
#ifndef UART_TICKS
#define UART_TICKS	2000000ull
#endif

/* Receive buffers given back are announced to the device every
 * RX_KICK_BATCH buffers and before sleeping, not one kick (an exit) per
 * packet: the device then always holds three quarters of them. */
#define RX_KICK_BATCH	(NBUF / 4)

#define AGENT_PORT	10240
#define AGENT_HDR	8
#define AGENT_MAX	65536

struct __attribute__((packed)) vs_hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
};

enum { C_FREE, C_CONNECTING, C_OPEN, C_CLOSING };
enum { M_ECHO, M_AGENT, M_CLIENT };
enum { AG_READ, AG_READY, AG_DONE };

struct conn {
	uint8_t state, mode, agent;
	uint8_t credit_requested;
	uint8_t shut_after_out, shut_sent;
	uint32_t lport, pport;
	/* The peer's view: its buffer and what it consumed; tx_cnt is what we
	 * sent it. */
	uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt;
	/* Ours: bytes consumed and the count the peer last saw. */
	uint32_t fwd_cnt, last_fwd_sent;
	uint32_t peer_shut;
	uint8_t *buf;
	uint32_t out_head, out_len;	/* bytes owed to the peer, a ring in buf */
	uint32_t in_len;		/* agent request or client reply bytes */
	uint64_t deadline;
};

struct listener {
	uint32_t port;
	uint8_t used, mode;
};

static struct {
	struct vdev *d;
	int up, irq_ok, busy;
	uint64_t cid;
	uint16_t tx_free[NBUF];
	int tx_nfree;
	int kick[3];
	int rx_unkicked;
	uint32_t resets, recoveries, next_port;
	uint64_t spin_until, uart_at;
	uint64_t rx_packets, tx_packets;
} vs;

/* How long vsock_idle spins after a packet; "vsock spin" changes it. */
static uint64_t spin_ticks = SPIN_TICKS;

static struct conn conns[NCONN];
static struct listener listeners[8];

static uint64_t rxbuf(uint16_t i) { return vs.d->mem + RX_OFF + (uint64_t)i * BUF; }
static uint64_t txbuf(uint16_t i) { return vs.d->mem + TX_OFF + (uint64_t)i * BUF; }

/* ---- transmit ------------------------------------------------------------- */

static void reap_tx(void)
{
	uint32_t id, len;
	while (vq_take(&vs.d->q[TXQ], &id, &len))
		if (id < NBUF && vs.tx_nfree < NBUF)
			vs.tx_free[vs.tx_nfree++] = (uint16_t)id;
}

/* tx_slot returns a free transmit buffer, waiting a little for the device
 * to hand one back; -1 if it does not (a broken device). */
static int tx_slot(void)
{
	if (!vs.tx_nfree)
		reap_tx();
	if (!vs.tx_nfree) {
		vq_kick(vs.d, &vs.d->q[TXQ]);
		vs.kick[TXQ] = 0;
		uint64_t start = rdtsc();
		while (!vs.tx_nfree && rdtsc() - start < TSC_SECOND) {
			cpu_relax();
			reap_tx();
		}
	}
	if (!vs.tx_nfree) {
		/* The device stopped taking packets: if it says it is broken,
		 * start it over at the next idle moment. */
		if (vr_read(vs.d, VR_STATUS) & ST_NEEDS_RESET)
			vs.d->stale = 1;
		return -1;
	}
	return vs.tx_free[--vs.tx_nfree];
}

/* send_raw queues one packet; the kick waits for the end of the pass. */
static int send_raw(uint32_t lport, uint32_t pport, uint16_t op, uint32_t flags, uint32_t buf_alloc,
		    uint32_t fwd_cnt, const uint8_t *payload, uint32_t len)
{
	int slot = tx_slot();
	if (slot < 0)
		return -1;
	struct vs_hdr *h = (struct vs_hdr *)txbuf((uint16_t)slot);
	h->src_cid = vs.cid;
	h->dst_cid = HOST_CID;
	h->src_port = lport;
	h->dst_port = pport;
	h->len = len;
	h->type = TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = buf_alloc;
	h->fwd_cnt = fwd_cnt;
	if (len)
		memcpy((uint8_t *)h + HDR, payload, len);
	struct vq *q = &vs.d->q[TXQ];
	vq_set_desc(q, (uint16_t)slot, (uint64_t)h, HDR + len, 0, 0);
	vq_publish(q, (uint16_t)slot);
	vs.kick[TXQ] = 1;
	vs.tx_packets++;
	return 0;
}

static int send_ctl(struct conn *c, uint16_t op, uint32_t flags)
{
	c->last_fwd_sent = c->fwd_cnt;
	return send_raw(c->lport, c->pport, op, flags, BUF_ALLOC, c->fwd_cnt, 0, 0);
}

static void send_rst_to(uint32_t lport, uint32_t pport)
{
	send_raw(lport, pport, OP_RST, 0, 0, 0, 0, 0);
}

static void kicks(void)
{
	if (vs.kick[RXQ])
		vs.rx_unkicked = 0;
	for (int i = 0; i < 3; i++)
		if (vs.kick[i]) {
			vs.kick[i] = 0;
			vq_kick(vs.d, &vs.d->q[i]);
		}
}

/* ---- connections ----------------------------------------------------------- */

static struct conn *conn_find(uint32_t lport, uint32_t pport)
{
	for (int i = 0; i < NCONN; i++)
		if (conns[i].state != C_FREE && conns[i].lport == lport && conns[i].pport == pport)
			return &conns[i];
	return 0;
}

static struct conn *conn_new(uint8_t mode, uint32_t lport, uint32_t pport)
{
	struct conn *c = 0;
	for (int i = 0; i < NCONN && !c; i++)
		if (conns[i].state == C_FREE)
			c = &conns[i];
	/* No room: a connection waiting for the peer's last RST gives way. */
	for (int i = 0; i < NCONN && !c; i++)
		if (conns[i].state == C_CLOSING) {
			send_rst_to(conns[i].lport, conns[i].pport);
			c = &conns[i];
		}
	if (!c)
		return 0;
	uint8_t *buf = (uint8_t *)(vs.d->mem + CONN_OFF + (uint64_t)(c - conns) * CONN_BUF);
	memset(c, 0, sizeof(*c));
	c->buf = buf;
	c->mode = mode;
	c->lport = lport;
	c->pport = pport;
	return c;
}

static void conn_free(struct conn *c)
{
	c->state = C_FREE;
}

static void conn_reset(struct conn *c)
{
	send_rst_to(c->lport, c->pport);
	conn_free(c);
}

static uint32_t peer_credit(const struct conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* flush sends what the connection owes the peer, as its credit allows,
 * then its SHUTDOWN once everything is out. */
static void flush(struct conn *c)
{
	while (c->state == C_OPEN && c->out_len) {
		uint32_t credit = peer_credit(c);
		if (!credit) {
			if (!c->credit_requested) {
				c->credit_requested = 1;
				send_ctl(c, OP_CREDIT_REQUEST, 0);
			}
			return;
		}
		uint32_t n = c->out_len;
		if (n > credit)
			n = credit;
		if (n > MAX_PAYLOAD)
			n = MAX_PAYLOAD;
		if (n > RING - c->out_head)
			n = RING - c->out_head;
		if (c->mode == M_ECHO)
			c->fwd_cnt += n;	/* the bytes leave our buffer */
		c->last_fwd_sent = c->fwd_cnt;
		if (send_raw(c->lport, c->pport, OP_RW, 0, BUF_ALLOC, c->fwd_cnt, c->buf + c->out_head, n) < 0) {
			if (c->mode == M_ECHO)
				c->fwd_cnt -= n;
			return;
		}
		c->tx_cnt += n;
		c->out_head = (c->out_head + n) % RING;
		c->out_len -= n;
	}
	if (c->state == C_OPEN && !c->out_len && c->shut_after_out && !c->shut_sent) {
		c->shut_sent = 1;
		send_ctl(c, OP_SHUTDOWN, SHUT_BOTH);
		c->state = C_CLOSING;
		c->deadline = rdtsc() + 2 * TSC_SECOND;
	}
}

static int out_append(struct conn *c, const uint8_t *p, uint32_t n)
{
	if (n > RING - c->out_len)
		return -1;
	uint32_t tail = (c->out_head + c->out_len) % RING;
	for (uint32_t done = 0; done < n;) {
		uint32_t chunk = n - done;
		if (chunk > RING - tail)
			chunk = RING - tail;
		memcpy(c->buf + tail, p + done, chunk);
		tail = (tail + chunk) % RING;
		done += chunk;
	}
	c->out_len += n;
	return 0;
}

/* consumed tells the peer about freed buffer space when it may be
 * running short; packets we send anyway carry it too. */
static void consumed(struct conn *c, uint32_t n)
{
	c->fwd_cnt += n;
	if (c->fwd_cnt - c->last_fwd_sent >= BUF_ALLOC / 4)
		send_ctl(c, OP_CREDIT_UPDATE, 0);
}

/* ---- agent protocol (guest/agent/README.md) -------------------------------- */

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* agent_bytes takes request bytes; a header that breaks the protocol
 * ends the stream, as the protocol says. */
static void agent_bytes(struct conn *c, const uint8_t *p, uint32_t n)
{
	if (c->agent != AG_READ)
		return;			/* after the request: only the caller leaving matters */
	uint32_t need = AGENT_HDR;
	if (c->in_len >= AGENT_HDR)
		need = AGENT_HDR + le32(c->buf);
	while (n && c->in_len < need) {
		uint32_t k = need - c->in_len;
		if (k > n)
			k = n;
		memcpy(c->buf + c->in_len, p, k);
		c->in_len += k;
		p += k;
		n -= k;
		if (c->in_len == AGENT_HDR) {
			const uint8_t *h = c->buf;
			if (h[4] != 0x01 || h[5] || h[6] || h[7] || le32(h) > AGENT_MAX) {
				conn_reset(c);
				return;
			}
			need = AGENT_HDR + le32(h);
		}
	}
	if (c->in_len >= AGENT_HDR && c->in_len == need)
		c->agent = AG_READY;
}

static void frame(struct conn *c, uint8_t type, const uint8_t *p, uint32_t n)
{
	uint8_t h[AGENT_HDR] = {0};
	put_le32(h, n);
	h[4] = type;
	out_append(c, h, AGENT_HDR);
	if (n)
		out_append(c, p, n);
}

static void exit_frame(struct conn *c, uint8_t kind, int32_t code, const char *msg)
{
	uint8_t e[8 + 160] = {0};
	uint32_t n = 8;
	e[0] = kind;
	put_le32(e + 4, (uint32_t)code);
	while (msg && *msg && n < sizeof(e))
		e[n++] = (uint8_t)*msg++;
	frame(c, 0x12, e, n);
}

/* agent_run answers a complete request: a ping at once, a command through
 * the probe's own interpreter, its output as stdout (and "error:" lines
 * as stderr) frames, then the exit frame. */
static void agent_run(struct conn *c)
{
	const uint8_t *p = c->buf + AGENT_HDR;
	uint32_t n = le32(c->buf);
	static char line[LINE_MAX + 1];
	const char *bad = 0;
	uint32_t argc = 0, len = 0;
	if (n < 20)
		bad = "agent protocol: request shorter than its fixed part (20 bytes)";
	else if (p[0] != 'V' || p[1] != 'A' || p[2] != 'G' || p[3] != 'T')
		bad = "agent protocol: request magic is not \"VAGT\"";
	else if (le16(p + 4) != 1)
		bad = "agent protocol: request version is not 1, this agent speaks 1";
	else if (le16(p + 6) > 1024 || le16(p + 8) > 1024)
		bad = "agent protocol: too many arguments or environment entries";
	else if (le16(p + 10) != 0)
		bad = "agent protocol: request flags set: none are defined";
	else if (le32(p + 12) > 86400000u)
		bad = "agent protocol: request timeout exceeds 24h";
	if (!bad) {
		argc = le16(p + 6);
		uint32_t strs = argc + le16(p + 8), off = 20;
		for (uint32_t i = 0; i < strs && !bad; i++) {
			if (n - off < 2) {
				bad = "agent protocol: request ends inside a string length";
				break;
			}
			uint32_t sl = le16(p + off);
			off += 2;
			if (sl > n - off) {
				bad = "agent protocol: a string runs past the request";
				break;
			}
			for (uint32_t j = 0; j < sl; j++)
				if (p[off + j] == 0)
					bad = "agent protocol: a string holds a NUL byte";
			if (i == 0 && sl == 0)
				bad = "agent protocol: empty command name";
			if (i < argc && !bad) {
				/* argv joined by spaces is the command line. */
				if (i > 0 && len < LINE_MAX)
					line[len++] = ' ';
				if (sl > LINE_MAX - len) {
					bad = "command line longer than the probe's 256 bytes";
					break;
				}
				memcpy(line + len, p + off, sl);
				len += sl;
			}
			off += sl;
		}
		if (!bad && le32(p + 16) != n - off)
			bad = "agent protocol: standard input length does not match the request";
	}
	line[len] = 0;
	c->agent = AG_DONE;
	c->out_head = c->out_len = 0;	/* the request is parsed: buf becomes the answer */
	if (bad) {
		exit_frame(c, 2, 0, bad);
	} else if (argc == 0) {
		exit_frame(c, 0, 0, 0);		/* a ping */
	} else {
		struct capture cap = {
			.out = (char *)(vs.d->mem + CAP_OFF), .err = (char *)(vs.d->mem + CAP_OFF + CAP_OUT),
			.cap = CAP_OUT,
		}, *saved;
		capture_begin(&cap, &saved);
		int status = run_command(line);
		capture_end(saved);
		if (cap.err_len > CAP_ERR)
			cap.err_len = CAP_ERR;
		if (cap.out_len)
			frame(c, 0x10, (const uint8_t *)cap.out, (uint32_t)cap.out_len);
		if (cap.err_len)
			frame(c, 0x11, (const uint8_t *)cap.err, (uint32_t)cap.err_len);
		exit_frame(c, 0, status, cap.truncated ? "output truncated by the probe (16 KiB)" : 0);
	}
	c->shut_after_out = 1;
	flush(c);
}

/* ---- receive ---------------------------------------------------------------- */

static struct listener *listener_of(uint32_t port)
{
	for (unsigned i = 0; i < sizeof(listeners) / sizeof(listeners[0]); i++)
		if (listeners[i].used && listeners[i].port == port)
			return &listeners[i];
	return 0;
}

static void deliver(struct conn *c, const uint8_t *p, uint32_t n)
{
	switch (c->mode) {
	case M_ECHO:
		/* Within the credit we gave, the ring has room; more is a peer
		 * that ignores flow control. */
		if (out_append(c, p, n) < 0) {
			conn_reset(c);
			return;
		}
		break;
	case M_AGENT:
		agent_bytes(c, p, n);
		if (c->state == C_FREE)
			return;
		consumed(c, n);
		break;
	case M_CLIENT:
		for (uint32_t i = 0; i < n && c->in_len < LINE_MAX; i++)
			c->buf[RING + c->in_len++] = p[i];
		consumed(c, n);
		break;
	}
}

static void rx_packet(const struct vs_hdr *h, uint32_t len)
{
	vs.rx_packets++;
	if (len < HDR || h->dst_cid != vs.cid || h->src_cid != HOST_CID)
		return;
	if (h->type != TYPE_STREAM || h->len > len - HDR) {
		if (h->op != OP_RST)
			send_rst_to(h->dst_port, h->src_port);
		return;
	}
	struct conn *c = conn_find(h->dst_port, h->src_port);
	if (!c) {
		if (h->op == OP_REQUEST) {
			struct listener *l = listener_of(h->dst_port);
			if (l && (c = conn_new(l->mode, h->dst_port, h->src_port))) {
				c->state = C_OPEN;
				c->peer_buf_alloc = h->buf_alloc;
				c->peer_fwd_cnt = h->fwd_cnt;
				send_ctl(c, OP_RESPONSE, 0);
				return;
			}
		}
		if (h->op != OP_RST)
			send_rst_to(h->dst_port, h->src_port);
		return;
	}
	if (h->op == OP_RST) {
		conn_free(c);
		return;
	}
	if (h->buf_alloc != c->peer_buf_alloc || h->fwd_cnt != c->peer_fwd_cnt)
		c->credit_requested = 0;
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		if (c->state != C_CONNECTING) {
			conn_reset(c);
			return;
		}
		c->state = C_OPEN;
		break;
	case OP_RW:
		if (c->state != C_OPEN || (c->peer_shut & SHUT_SEND)) {
			conn_reset(c);
			return;
		}
		deliver(c, (const uint8_t *)h + HDR, h->len);
		break;
	case OP_CREDIT_REQUEST:
		send_ctl(c, OP_CREDIT_UPDATE, 0);
		break;
	case OP_CREDIT_UPDATE:
		break;
	case OP_SHUTDOWN:
		c->peer_shut |= h->flags & SHUT_BOTH;
		if (c->peer_shut == SHUT_BOTH || c->state != C_OPEN) {
			/* Nothing can flow any more: complete the close. */
			conn_reset(c);
			return;
		}
		/* The peer sends no more: an echo finishes what it owes and
		 * closes; an agent without a whole request never will. */
		if (c->mode == M_AGENT && c->agent == AG_READ) {
			conn_reset(c);
			return;
		}
		if (c->mode == M_ECHO)
			c->shut_after_out = 1;
		break;
	default:
		conn_reset(c);
		return;
	}
	if (c->state != C_FREE)
		flush(c);
}

/* A transport reset (after a restore): the device forgot every
 * connection, so they end without a packet; listeners stay. */
static void transport_reset(void)
{
	for (int i = 0; i < NCONN; i++)
		conn_free(&conns[i]);
	vs.cid = vdev_config32(vs.d, 0) | (uint64_t)vdev_config32(vs.d, 4) << 32;
	vs.resets++;
}

/* poll does one pass over the event and receive rings; it returns how
 * many packets it handled. Not reentrant: commands that wait call it in a
 * loop, packets never run commands (agent requests wait for
 * vsock_run_pending). */
static int poll(void)
{
	if (!vs.up || vs.busy)
		return 0;
	vs.busy = 1;
	int work = 0;
	uint32_t id, len;
	struct vq *ev = &vs.d->q[EVQ], *rx = &vs.d->q[RXQ];
	while (vq_take(ev, &id, &len)) {
		work++;
		if (len >= 4 && id == 0 && rd32(vs.d->mem + EV_OFF) == EVENT_TRANSPORT_RESET)
			transport_reset();
		/* Straight back, so that the device lets held connections
		 * through (volt-vmm waits for this up to 250 ms). */
		if (id == 0) {
			vq_publish(ev, 0);
			vq_kick(vs.d, ev);
		}
	}
	while (vq_take(rx, &id, &len)) {
		work++;
		if (id < rx->size) {
			rx_packet((const struct vs_hdr *)rxbuf((uint16_t)id), len > BUF ? 0 : len);
			vq_publish(rx, (uint16_t)id);
			if (++vs.rx_unkicked >= RX_KICK_BATCH)
				vs.kick[RXQ] = 1;
		}
	}
	reap_tx();
	uint64_t now = rdtsc();
	for (int i = 0; i < NCONN; i++) {
		struct conn *c = &conns[i];
		if (c->state == C_OPEN && c->out_len)
			flush(c);
		else if (c->state == C_CLOSING && now > c->deadline)
			conn_reset(c);
	}
	kicks();
	vs.busy = 0;
	return work;
}

int vsock_run_pending(void)
{
	int ran = 0;
	for (int i = 0; i < NCONN; i++) {
		struct conn *c = &conns[i];
		if (c->state == C_OPEN && c->mode == M_AGENT && c->agent == AG_READY) {
			agent_run(c);
			ran++;
		}
	}
	if (ran)
		kicks();
	return ran;
}

/* ---- set-up ------------------------------------------------------------------ */

int vsock_setup(struct vdev *d)
{
	vs.up = 0;
	if (!d->mem && !(d->mem = dma_alloc(VSOCK_MEM))) {
		vdev_fail(d, "no DMA memory (RAM must cover 2-4 MiB)");
		return -1;
	}
	if (vdev_negotiate(d, F_INDIRECT_DESC) < 0)
		return -1;
	if (vdev_queue(d, RXQ, 0, NBUF) < 0 || vdev_queue(d, TXQ, 1, NBUF) < 0 || vdev_queue(d, EVQ, 2, 4) < 0)
		return -1;
	vs.d = d;
	vs.cid = vdev_config32(d, 0) | (uint64_t)vdev_config32(d, 4) << 32;
	for (int i = 0; i < NCONN; i++)
		conn_free(&conns[i]);
	struct vq *rx = &d->q[RXQ], *tx = &d->q[TXQ], *ev = &d->q[EVQ];
	vs.tx_nfree = 0;
	for (uint16_t i = 0; i < tx->size; i++)
		vs.tx_free[vs.tx_nfree++] = i;
	for (uint16_t i = 0; i < rx->size; i++) {
		vq_set_desc(rx, i, rxbuf(i), BUF, VRING_DESC_F_WRITE, 0);
		vq_publish(rx, i);
	}
	vq_set_desc(ev, 0, d->mem + EV_OFF, 4, VRING_DESC_F_WRITE, 0);
	vq_publish(ev, 0);
	/* Polled: no interrupts but while the console sleeps (vsock_idle). */
	vq_set_interrupts(rx, 0);
	vq_set_interrupts(tx, 0);
	vq_set_interrupts(ev, 0);
	vdev_driver_ok(d);
	vq_kick(d, rx);
	vq_kick(d, ev);
	vs.kick[0] = vs.kick[1] = vs.kick[2] = 0;
	vs.rx_unkicked = 0;
	if (!vs.next_port)
		vs.next_port = 49152;
	vs.irq_ok = d->irq < 16 && d->irq != 2 && d->irq != 4;
	if (vs.irq_ok)
		pic_unmask(d->irq);
	vs.up = 1;
	return 0;
}

static struct vdev *vsock_dev(void)
{
	if (!virtio_up()) {
		error("no virtio devices on the command line");
		return 0;
	}
	struct vdev *d = vdev_of_type(DEV_VSOCK);
	if (!d) {
		error("no vsock device");
		return 0;
	}
	if (!d->ready || !vs.up) {
		error_start();
		put_str("vsock device not usable: ");
		put_str(d->err ? d->err : "not set up");
		put_line();
		return 0;
	}
	return d;
}

/* ---- idle ---------------------------------------------------------------------- */

int vsock_idle(void)
{
	if (vs.d && vs.d->stale && !vs.busy) {
		vs.d->stale = 0;
		vs.recoveries++;
		vsock_setup(vs.d);
	}
	if (!vs.up)
		return 0;
	for (;;) {
		int work = poll() + vsock_run_pending();
		uint64_t now = rdtsc();
		if (work) {
			vs.spin_until = now + spin_ticks;
			if (now - vs.uart_at > UART_TICKS) {
				vs.uart_at = now;
				return 1;	/* the caller looks at the UART */
			}
		} else if ((int64_t)(now - vs.spin_until) > 0) {
			break;
		}
		cpu_relax();
	}
	/* Sleep. Tell the device of the buffers it has not heard of, turn
	 * interrupts back on and look once more: a packet that came in
	 * between would raise no new interrupt until it is taken. */
	struct vq *rx = &vs.d->q[RXQ], *ev = &vs.d->q[EVQ];
	if (vs.rx_unkicked) {
		vs.kick[RXQ] = 1;
		kicks();
	}
	if (vs.irq_ok) {
		vq_set_interrupts(rx, 1);
		vq_set_interrupts(ev, 1);
		full_fence();
	}
	if (!vq_pending(rx) && !vq_pending(ev))
		wait_for_interrupt();
	vq_set_interrupts(rx, 0);
	vq_set_interrupts(ev, 0);
	/* Woken for no packet: maybe the UART, maybe a configuration
	 * change, which is how a device says it broke (§2.1.2). A broken
	 * device is reset and set up again, as Linux's drivers do not, but
	 * the agent must come back without anyone at the console. */
	if (!vq_pending(rx) && !vq_pending(ev) && (vr_read(vs.d, VR_INTERRUPT_STATUS) & 2)) {
		vr_write(vs.d, VR_INTERRUPT_ACK, 2);
		if (vr_read(vs.d, VR_STATUS) & ST_NEEDS_RESET) {
			vs.recoveries++;
			vsock_setup(vs.d);
		}
	}
	vs.spin_until = rdtsc() + spin_ticks;
	vs.uart_at = rdtsc();
	return 1;
}

/* ---- commands -------------------------------------------------------------------- */

static int listen_on(uint32_t port, uint8_t mode)
{
	struct listener *l = listener_of(port);
	for (unsigned i = 0; !l && i < sizeof(listeners) / sizeof(listeners[0]); i++)
		if (!listeners[i].used)
			l = &listeners[i];
	if (!l)
		return -1;
	l->used = 1;
	l->port = port;
	l->mode = mode;
	return 0;
}

static int parse_port(char **arg, uint32_t *port, uint32_t dflt)
{
	char *w = next_word(arg);
	uint64_t v = dflt;
	if (*w && !parse_u64(w, &v))
		return 0;
	if (v > 0xffffffffu || (!*w && !dflt))
		return 0;
	*port = (uint32_t)v;
	return 1;
}

static void listen_command(char *arg, uint8_t mode, uint32_t dflt)
{
	const char *what = mode == M_AGENT ? "agent" : "vsock";
	uint32_t port;
	if (!parse_port(&arg, &port, dflt)) {
		error(mode == M_AGENT ? "usage: agent [PORT]" : "usage: vsock listen PORT");
		return;
	}
	if (!vsock_dev())
		return;
	if (listen_on(port, mode) < 0) {
		error("too many listeners (8)");
		return;
	}
	put_str(what);
	put_str(" listening ");
	put_dec(port);
	put_line();
}

/* spin_until_state polls until c leaves state from or timeout ticks
 * pass. */
static void spin_while(struct conn *c, uint8_t state, uint64_t timeout)
{
	uint64_t start = rdtsc();
	while (c->state == state && rdtsc() - start < timeout) {
		poll();
		cpu_relax();
	}
}

/*
 * "vsock connect PORT [TEXT]": connect to the host's PORT (volt-vmm:
 * <uds_path>_PORT), send TEXT (default "ping") and a newline, print the
 * first line that comes back, close.
 */
static void connect_command(char *arg)
{
	uint32_t port;
	if (!parse_port(&arg, &port, 0)) {
		error("usage: vsock connect PORT [TEXT]");
		return;
	}
	const char *text = *arg ? arg : "ping";
	if (!vsock_dev())
		return;
	uint32_t lport = 0;
	for (int tries = 0; tries < 16384 && !lport; tries++) {
		uint32_t p = vs.next_port++;
		if (vs.next_port > 65535)
			vs.next_port = 49152;
		if (!conn_find(p, port) && !listener_of(p))
			lport = p;
	}
	struct conn *c = lport ? conn_new(M_CLIENT, lport, port) : 0;
	if (!c) {
		error("vsock connect: no free connection");
		return;
	}
	c->state = C_CONNECTING;
	send_ctl(c, OP_REQUEST, 0);
	kicks();
	spin_while(c, C_CONNECTING, 2 * TSC_SECOND);
	if (c->state != C_OPEN) {
		int timed_out = c->state == C_CONNECTING;
		if (timed_out)
			conn_reset(c);
		kicks();
		error_start();
		put_str("vsock connect ");
		put_dec(port);
		put_str(timed_out ? ": timed out" : ": connection refused (reset by the host)");
		put_line();
		return;
	}
	size_t tl = 0;
	while (text[tl])
		tl++;
	out_append(c, (const uint8_t *)text, (uint32_t)tl);
	out_append(c, (const uint8_t *)"\n", 1);
	flush(c);
	kicks();
	uint64_t start = rdtsc();
	int got = 0;
	while (c->state == C_OPEN && rdtsc() - start < 2 * TSC_SECOND) {
		for (uint32_t i = 0; i < c->in_len; i++)
			if (c->buf[RING + i] == '\n')
				got = 1;
		if (got || (c->peer_shut & SHUT_SEND))
			break;
		poll();
		cpu_relax();
	}
	/* A connection the host ended is freed at once, and its slot may
	 * already hold a new one by now: its bytes are ours only if not. */
	int mine = c->mode == M_CLIENT && c->lport == lport && c->pport == port;
	uint32_t n = 0;
	while (mine && n < c->in_len && c->buf[RING + n] != '\n')
		n++;
	got = got && mine;
	if (mine && c->state != C_FREE) {
		c->shut_after_out = 1;
		flush(c);
		kicks();
	}
	if (!got && !n) {
		error_start();
		put_str("vsock connect ");
		put_dec(port);
		put_str(": no answer");
		put_line();
		return;
	}
	put_str("vsock reply ");
	for (uint32_t i = 0; i < n; i++) {
		char ch = (char)c->buf[RING + i];
		put_char(ch >= 0x20 && ch < 0x7f ? ch : '?');
	}
	put_line();
}

void vsock_status(void)
{
	int nl = 0, nc = 0;
	for (unsigned i = 0; i < sizeof(listeners) / sizeof(listeners[0]); i++)
		nl += listeners[i].used;
	for (int i = 0; i < NCONN; i++)
		nc += conns[i].state != C_FREE;
	put_str("vsock cid=");
	put_dec(vs.cid);
	put_str(" listeners=");
	put_dec((uint64_t)nl);
	put_str(" conns=");
	put_dec((uint64_t)nc);
	put_str(" resets=");
	put_dec(vs.resets);
	put_str(" rx=");
	put_dec(vs.rx_packets);
	put_str(" tx=");
	put_dec(vs.tx_packets);
	put_str(" irq=");
	put_str(vs.irq_ok ? "pic" : "none");
	put_str(" recoveries=");
	put_dec(vs.recoveries);
	put_line();
}

void vsock_command(char *arg)
{
	char *op = next_word(&arg);
	if (streq(op, "listen")) {
		listen_command(arg, M_ECHO, 0);
	} else if (streq(op, "connect")) {
		connect_command(arg);
	} else if (streq(op, "status")) {
		if (vsock_dev())
			vsock_status();
	} else if (streq(op, "spin")) {
		uint64_t t;
		char *w = next_word(&arg);
		if (*w && !parse_u64(w, &t)) {
			error("usage: vsock spin [TSC-TICKS]");
			return;
		}
		if (*w)
			spin_ticks = t;
		put_str("vsock spin ");
		put_dec(spin_ticks);
		put_line();
	} else {
		error("usage: vsock listen PORT | connect PORT [TEXT] | status | spin [TICKS]");
	}
}

void vsock_set_spin(uint64_t ticks)
{
	spin_ticks = ticks;
}

void agent_command(char *arg)
{
	listen_command(arg, M_AGENT, AGENT_PORT);
}

void vsock_start_agent(uint32_t port)
{
	char arg[12], *p = arg + sizeof(arg) - 1;
	*p = 0;
	do {
		*--p = (char)('0' + port % 10);
		port /= 10;
	} while (port);
	agent_command(p);
}
