/*
 * A minimal virtio-mmio version 2 driver: the devices Linux would find on
 * its command line (virtio_mmio.device=SIZE@BASE:IRQ), initialised as
 * virtio 1.2 §3.1.1 says, with split virtqueues in the DMA area. Block,
 * entropy and net requests are synchronous: one chain in flight, the used
 * ring polled with a spin (ring 3 is native, an interrupt would cost
 * emulated ring-0 instructions). Register accesses are VM exits, so the
 * data paths touch none but QueueNotify.
 */
#include <stddef.h>
#include <stdint.h>

#include "probe.h"
#include "virtio.h"

static struct vdev devs[VDEV_MAX];
static int ndevs;
static int devs_probed;

/* ---- command line ------------------------------------------------------- */

/* parse_num reads a number as Linux's simple_strtoull with base 0 does
 * for these parameters (0x for hex, else decimal), from the command line
 * in guest memory. */
static int parse_num(uint64_t *p, uint64_t end, uint64_t *out)
{
	uint64_t v = 0, a = *p;
	int base = 10, digits = 0;
	if (a + 1 < end && rd8(a) == '0' && (rd8(a + 1) == 'x' || rd8(a + 1) == 'X')) {
		base = 16;
		a += 2;
	}
	for (; a < end; a++, digits++) {
		uint8_t c = rd8(a);
		unsigned d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			break;
		if (v > (UINT64_MAX >> 4) / 10)
			return 0;
		v = v * (uint64_t)base + d;
	}
	if (!digits)
		return 0;
	*p = a;
	*out = v;
	return 1;
}

/* One "virtio_mmio.device=" value between a and end. Malformed values are
 * skipped, as Linux skips them. */
static void parse_device(uint64_t a, uint64_t end)
{
	uint64_t size, base, irq;
	if (!parse_num(&a, end, &size))
		return;
	if (a < end) {
		switch (rd8(a)) {
		case 'K': case 'k': size <<= 10; a++; break;
		case 'M': case 'm': size <<= 20; a++; break;
		case 'G': case 'g': size <<= 30; a++; break;
		}
	}
	if (a >= end || rd8(a) != '@')
		return;
	a++;
	if (!parse_num(&a, end, &base) || a >= end || rd8(a) != ':')
		return;
	a++;
	if (!parse_num(&a, end, &irq) || irq > 255)
		return;
	/* An optional ":ID" (the platform device's id) may follow. */
	if (a < end && rd8(a) != ':')
		return;
	if (size < VR_CONFIG + 4 || !mapped(base, size) || ndevs >= VDEV_MAX)
		return;
	struct vdev *d = &devs[ndevs];
	d->slot = ndevs++;
	d->base = base;
	d->size = size;
	d->irq = (uint32_t)irq;
}

void virtio_parse_cmdline(uint64_t cmdline)
{
	static const char key[] = "virtio_mmio.device=";
	uint64_t limit = cmdline;
	while (limit - cmdline < 4096 && mapped(limit, 1) && rd8(limit))
		limit++;
	for (uint64_t a = cmdline; a < limit;) {
		while (a < limit && rd8(a) == ' ')
			a++;
		uint64_t w = a;
		while (a < limit && rd8(a) != ' ')
			a++;
		size_t j = 0;
		while (key[j] && w + j < a && rd8(w + j) == (uint8_t)key[j])
			j++;
		if (!key[j])
			parse_device(w + j, a);
	}
}

/* ---- rings ---------------------------------------------------------------- */

void vq_set_desc(struct vq *q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint64_t d = vq_desc_addr(q, i);
	*(volatile uint64_t *)d = addr;
	*(volatile uint32_t *)(d + 8) = len;
	*(volatile uint16_t *)(d + 12) = flags;
	*(volatile uint16_t *)(d + 14) = next;
}

/* vq_publish makes a chain available: the ring entry, then the index
 * (§2.7.13: the index is written last; x86 keeps stores in order). */
void vq_publish(struct vq *q, uint16_t head)
{
	uint64_t avail = vq_avail(q);
	*(volatile uint16_t *)(avail + 4 + 2 * (q->avail_idx % q->size)) = head;
	compiler_fence();
	q->avail_idx++;
	*(volatile uint16_t *)(avail + 2) = q->avail_idx;
}

/* vq_kick notifies the device unless it said it need not be told
 * (VRING_USED_F_NO_NOTIFY). The fence orders the index store before the
 * flag load (§2.7.13.4), which x86 would otherwise let pass. */
void vq_kick(struct vdev *d, struct vq *q)
{
	full_fence();
	if (*(volatile uint16_t *)vq_used(q) & VRING_USED_F_NO_NOTIFY)
		return;
	vr_write(d, VR_QUEUE_NOTIFY, q->index);
}

int vq_pending(const struct vq *q)
{
	return (uint16_t)(*(volatile uint16_t *)(vq_used(q) + 2) - q->used_seen) != 0;
}

int vq_take(struct vq *q, uint32_t *id, uint32_t *len)
{
	uint64_t used = vq_used(q);
	if (*(volatile uint16_t *)(used + 2) == q->used_seen)
		return 0;
	/* The entry is read after the index (loads stay in order on x86). */
	compiler_fence();
	uint64_t e = used + 4 + 8ull * (q->used_seen % q->size);
	*id = *(volatile uint32_t *)e;
	*len = *(volatile uint32_t *)(e + 4);
	q->used_seen++;
	return 1;
}

void vq_set_interrupts(struct vq *q, int on)
{
	*(volatile uint16_t *)vq_avail(q) = on ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
}

/* ---- transport ------------------------------------------------------------ */

void vdev_fail(struct vdev *d, const char *why)
{
	d->err = why;
	d->ready = 0;
	vr_write(d, VR_STATUS, vr_read(d, VR_STATUS) | ST_FAILED);
}

uint32_t vdev_config32(const struct vdev *d, uint32_t off)
{
	return vr_read(d, VR_CONFIG + off);
}

int vdev_negotiate(struct vdev *d, uint64_t wanted)
{
	d->ready = 0;
	d->err = 0;
	d->nq = 0;
	vr_write(d, VR_STATUS, 0);		/* reset */
	vr_write(d, VR_STATUS, ST_ACKNOWLEDGE);
	vr_write(d, VR_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
	vr_write(d, VR_DEVICE_FEATURES_SEL, 1);
	uint64_t offered = (uint64_t)vr_read(d, VR_DEVICE_FEATURES) << 32;
	vr_write(d, VR_DEVICE_FEATURES_SEL, 0);
	offered |= vr_read(d, VR_DEVICE_FEATURES);
	if (!(offered & F_VERSION_1)) {
		vdev_fail(d, "VIRTIO_F_VERSION_1 not offered");
		return -1;
	}
	d->features = offered & (wanted | F_VERSION_1);
	vr_write(d, VR_DRIVER_FEATURES_SEL, 1);
	vr_write(d, VR_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
	vr_write(d, VR_DRIVER_FEATURES_SEL, 0);
	vr_write(d, VR_DRIVER_FEATURES, (uint32_t)d->features);
	vr_write(d, VR_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
	if (!(vr_read(d, VR_STATUS) & ST_FEATURES_OK)) {
		vdev_fail(d, "FEATURES_OK refused");
		return -1;
	}
	return 0;
}

/* vdev_queue sets up queue number n (register index index) with at most
 * want_size entries (a power of two up to VQ_MAX). */
int vdev_queue(struct vdev *d, int n, uint16_t index, uint16_t want_size)
{
	struct vq *q = &d->q[n];
	vr_write(d, VR_QUEUE_SEL, index);
	if (vr_read(d, VR_QUEUE_READY)) {
		vdev_fail(d, "queue already ready after reset");
		return -1;
	}
	uint32_t max = vr_read(d, VR_QUEUE_NUM_MAX);
	if (max == 0) {
		vdev_fail(d, "queue not available");
		return -1;
	}
	uint16_t size = want_size;
	while (size > max)
		size >>= 1;
	if (!q->mem && !(q->mem = dma_alloc(4096))) {
		vdev_fail(d, "no DMA memory (RAM must cover 2-4 MiB)");
		return -1;
	}
	memset((void *)q->mem, 0, 4096);
	q->index = index;
	q->size = size;
	q->avail_idx = 0;
	q->used_seen = 0;
	vr_write(d, VR_QUEUE_NUM, size);
	vr_write(d, VR_QUEUE_DESC_LOW, (uint32_t)q->mem);
	vr_write(d, VR_QUEUE_DESC_HIGH, 0);
	vr_write(d, VR_QUEUE_DRIVER_LOW, (uint32_t)vq_avail(q));
	vr_write(d, VR_QUEUE_DRIVER_HIGH, 0);
	vr_write(d, VR_QUEUE_DEVICE_LOW, (uint32_t)vq_used(q));
	vr_write(d, VR_QUEUE_DEVICE_HIGH, 0);
	vr_write(d, VR_QUEUE_READY, 1);
	if (n + 1 > d->nq)
		d->nq = n + 1;
	return 0;
}

int vdev_driver_ok(struct vdev *d)
{
	vr_write(d, VR_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	d->ready = 1;
	return 0;
}

/* vdev_buffers gives the device its buffer memory once; later
 * initialisations reuse it. */
static int vdev_buffers(struct vdev *d, uint64_t size)
{
	if (!d->mem && !(d->mem = dma_alloc(size))) {
		vdev_fail(d, "no DMA memory (RAM must cover 2-4 MiB)");
		return -1;
	}
	return 0;
}

/* wait_used spins until the queue returns a chain or about timeout
 * ticks pass. */
static int wait_used(struct vq *q, uint32_t *id, uint32_t *len, uint64_t timeout)
{
	uint64_t start = rdtsc();
	while (!vq_take(q, id, len)) {
		if (rdtsc() - start > timeout)
			return 0;
		cpu_relax();
	}
	return 1;
}

static const char *type_name(uint32_t t)
{
	switch (t) {
	case DEV_NET: return "net";
	case DEV_BLOCK: return "block";
	case DEV_ENTROPY: return "entropy";
	case DEV_VSOCK: return "vsock";
	case 0: return "none";
	}
	return "other";
}

/* ---- block (§5.2) ----------------------------------------------------------- */

#define BLK_F_RO	(1ull << 5)
#define BLK_F_FLUSH	(1ull << 9)
#define BLK_T_IN	0
#define BLK_T_OUT	1
#define BLK_T_FLUSH	4
#define BLK_T_GET_ID	8
#define BLK_MAX_SECTORS	128		/* one 64 KiB data buffer */
#define BLK_DATA_OFF	4096		/* d->mem: header and status page, then data */

static int blk_setup(struct vdev *d)
{
	if (vdev_buffers(d, 4096 + BLK_MAX_SECTORS * 512) < 0)
		return -1;
	if (vdev_negotiate(d, BLK_F_RO | BLK_F_FLUSH | F_INDIRECT_DESC) < 0)
		return -1;
	if (vdev_queue(d, 0, 0, 16) < 0)
		return -1;
	vq_set_interrupts(&d->q[0], 0);		/* polled */
	return vdev_driver_ok(d);
}

/* blk_request sends one request of len data bytes (device-writable for
 * reads) and returns its status byte, or -1 when the device did not
 * answer. */
static int blk_request(struct vdev *d, uint32_t type, uint64_t sector, uint32_t len, int device_writes)
{
	struct vq *q = &d->q[0];
	uint64_t hdr = d->mem, status = d->mem + 64, data = d->mem + BLK_DATA_OFF;
	wr32(hdr, type);
	wr32(hdr + 4, 0);
	*(volatile uint64_t *)(hdr + 8) = sector;
	*(volatile uint8_t *)status = 0xff;
	uint16_t n = 0;
	vq_set_desc(q, n, hdr, 16, VRING_DESC_F_NEXT, (uint16_t)(n + 1));
	n++;
	if (len) {
		vq_set_desc(q, n, data, len, VRING_DESC_F_NEXT | (device_writes ? VRING_DESC_F_WRITE : 0), (uint16_t)(n + 1));
		n++;
	}
	vq_set_desc(q, n, status, 1, VRING_DESC_F_WRITE, 0);
	vq_publish(q, 0);
	vq_kick(d, q);
	uint32_t id, used;
	if (!wait_used(q, &id, &used, 2 * TSC_SECOND)) {
		/* The request may still complete into our buffers: the next
		 * command starts the device over. */
		d->ready = 0;
		d->stale = 1;
		d->err = "request timed out";
		return -1;
	}
	return *(volatile uint8_t *)status;
}

static const char *blk_status_name(int s)
{
	switch (s) {
	case 0: return "OK";
	case 1: return "IOERR";
	case 2: return "UNSUPP";
	case -1: return "none (timed out)";
	}
	return "unknown";
}

static void blk_error(const char *op, uint64_t sector, int status)
{
	error_start();
	put_str("blk ");
	put_str(op);
	if (sector != UINT64_MAX) {
		put_char(' ');
		put_dec(sector);
	}
	put_str(": status ");
	put_str(blk_status_name(status));
	put_line();
}

static struct vdev *need(uint32_t type)
{
	if (!virtio_up()) {
		error("no virtio devices on the command line");
		return 0;
	}
	struct vdev *d = vdev_of_type(type);
	if (!d) {
		error_start();
		put_str("no ");
		put_str(type_name(type));
		put_str(" device");
		put_line();
		return 0;
	}
	if (!d->ready) {
		error_start();
		put_str(type_name(type));
		put_str(" device not usable: ");
		put_str(d->err ? d->err : "not set up");
		put_line();
		return 0;
	}
	return d;
}

static int parse_sectors(char **arg, uint64_t *count)
{
	char *w = next_word(arg);
	*count = 1;
	if (*w && (!parse_u64(w, count) || *count == 0 || *count > BLK_MAX_SECTORS)) {
		error("sector count must be 1-128");
		return 0;
	}
	return 1;
}

static void blk_command(char *arg)
{
	char *op = next_word(&arg);
	struct vdev *d = need(DEV_BLOCK);
	if (!d)
		return;
	uint64_t sector, count, byte;
	if (streq(op, "read") || streq(op, "write")) {
		int write = streq(op, "write");
		if (!parse_u64(next_word(&arg), &sector)) {
			error(write ? "usage: blk write SECTOR BYTE [COUNT]" : "usage: blk read SECTOR [COUNT]");
			return;
		}
		if (write && (!parse_u64(next_word(&arg), &byte) || byte > 255)) {
			error("usage: blk write SECTOR BYTE [COUNT] (BYTE 0-255)");
			return;
		}
		if (!parse_sectors(&arg, &count))
			return;
		uint32_t len = (uint32_t)count * 512;
		uint8_t *data = (uint8_t *)(d->mem + BLK_DATA_OFF);
		if (write)
			memset(data, (int)byte, len);
		int s = blk_request(d, write ? BLK_T_OUT : BLK_T_IN, sector, len, !write);
		if (s != 0) {
			blk_error(op, sector, s);
			return;
		}
		put_str("blk ");
		put_str(op);
		put_char(' ');
		put_dec(sector);
		put_char(' ');
		put_dec(count);
		if (write) {
			put_str(" ok");
		} else {
			put_str(" hash=");
			put_hex64(word_hash(data, len));
			put_str(" head=");
			put_bytes_hex(data, 16);
		}
		put_line();
	} else if (streq(op, "flush")) {
		if (!(d->features & BLK_F_FLUSH)) {
			error("blk flush: VIRTIO_BLK_F_FLUSH not offered");
			return;
		}
		int s = blk_request(d, BLK_T_FLUSH, 0, 0, 0);
		if (s != 0) {
			blk_error(op, UINT64_MAX, s);
			return;
		}
		put_str("blk flush ok");
		put_line();
	} else if (streq(op, "id")) {
		uint8_t *data = (uint8_t *)(d->mem + BLK_DATA_OFF);
		memset(data, 0, 20);
		int s = blk_request(d, BLK_T_GET_ID, 0, 20, 1);
		if (s != 0) {
			blk_error(op, UINT64_MAX, s);
			return;
		}
		put_str("blk id ");
		for (int i = 0; i < 20 && data[i]; i++)
			put_char(data[i] >= 0x20 && data[i] < 0x7f ? (char)data[i] : '?');
		put_line();
	} else if (streq(op, "info")) {
		uint64_t cap = vdev_config32(d, 0) | (uint64_t)vdev_config32(d, 4) << 32;
		put_str("blk sectors=");
		put_dec(cap);
		put_str(" ro=");
		put_dec(!!(d->features & BLK_F_RO));
		put_str(" flush=");
		put_dec(!!(d->features & BLK_F_FLUSH));
		put_line();
	} else {
		error("usage: blk read|write|flush|id|info ...");
	}
}

/* ---- entropy (§5.4) --------------------------------------------------------- */

#define RNG_MAX		65536

static int rng_setup(struct vdev *d)
{
	if (vdev_buffers(d, RNG_MAX) < 0)
		return -1;
	if (vdev_negotiate(d, F_INDIRECT_DESC) < 0)
		return -1;
	if (vdev_queue(d, 0, 0, 8) < 0)
		return -1;
	vq_set_interrupts(&d->q[0], 0);		/* polled */
	return vdev_driver_ok(d);
}

static void rng_command(char *arg)
{
	uint64_t n;
	if (!parse_u64(next_word(&arg), &n) || n == 0 || n > RNG_MAX) {
		error("usage: rng N (1-65536 bytes)");
		return;
	}
	struct vdev *d = need(DEV_ENTROPY);
	if (!d)
		return;
	struct vq *q = &d->q[0];
	uint8_t *buf = (uint8_t *)d->mem;
	/* §5.4.6.1: the device may fill less than the buffer; ask again for
	 * the rest. */
	uint64_t got = 0;
	for (int tries = 0; got < n && tries < 64; tries++) {
		vq_set_desc(q, 0, d->mem + got, (uint32_t)(n - got), VRING_DESC_F_WRITE, 0);
		vq_publish(q, 0);
		vq_kick(d, q);
		uint32_t id, len;
		if (!wait_used(q, &id, &len, 2 * TSC_SECOND)) {
			d->ready = 0;
			d->stale = 1;
			d->err = "request timed out";
			error("rng: the device did not answer");
			return;
		}
		if (len > n - got) {
			error("rng: the device claims more bytes than the buffer holds");
			return;
		}
		got += len;
	}
	uint8_t seen[32] = {0};
	unsigned distinct = 0;
	for (uint64_t i = 0; i < got; i++) {
		uint8_t b = buf[i];
		if (!(seen[b >> 3] & (1u << (b & 7)))) {
			seen[b >> 3] |= (uint8_t)(1u << (b & 7));
			distinct++;
		}
	}
	if (got < n)
		cmd_status = 1;
	put_str("rng ");
	put_dec(n);
	put_str(" got=");
	put_dec(got);
	put_str(" hash=");
	put_hex64(word_hash(buf, got));
	put_str(" distinct=");
	put_dec(distinct);
	put_line();
}

/* ---- net (§5.1) --------------------------------------------------------------- */

#define NET_F_MAC	(1ull << 5)
#define NET_HDR		12		/* struct virtio_net_hdr with num_buffers (VERSION_1) */
#define NET_RX_BUFS	16
#define NET_BUF		2048		/* a 1514-byte frame and its header */
#define NET_TX_OFF	(NET_RX_BUFS * NET_BUF)

static uint8_t net_mac[6];

static int net_setup(struct vdev *d)
{
	if (vdev_buffers(d, NET_TX_OFF + NET_BUF) < 0)
		return -1;
	if (vdev_negotiate(d, NET_F_MAC | F_INDIRECT_DESC) < 0)
		return -1;
	if (vdev_queue(d, 0, 0, NET_RX_BUFS) < 0 || vdev_queue(d, 1, 1, 16) < 0)
		return -1;
	vq_set_interrupts(&d->q[0], 0);		/* polled */
	vq_set_interrupts(&d->q[1], 0);
	if (d->features & NET_F_MAC) {
		for (int i = 0; i < 6; i++)
			net_mac[i] = *(volatile uint8_t *)(d->base + VR_CONFIG + i);
	} else {
		/* A locally administered address of our own. */
		static const uint8_t own[6] = {0x02, 0x50, 0x52, 0x00, 0x00, 0x01};
		memcpy(net_mac, own, 6);
	}
	struct vq *rx = &d->q[0];
	for (uint16_t i = 0; i < rx->size; i++) {
		vq_set_desc(rx, i, d->mem + (uint64_t)i * NET_BUF, NET_BUF, VRING_DESC_F_WRITE, 0);
		vq_publish(rx, i);
	}
	vdev_driver_ok(d);
	vq_kick(d, rx);
	return 0;
}

static void put_mac(const uint8_t *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			put_char(':');
		put_hex(m[i], 2);
	}
}

static int parse_ip(const char *s, uint8_t ip[4])
{
	for (int i = 0; i < 4; i++) {
		unsigned v = 0, digits = 0;
		while (*s >= '0' && *s <= '9' && digits < 3) {
			v = v * 10 + (unsigned)(*s++ - '0');
			digits++;
		}
		if (!digits || v > 255 || (i < 3 && *s++ != '.'))
			return 0;
		ip[i] = (uint8_t)v;
	}
	return *s == 0;
}

static inline void be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/*
 * "net send" broadcasts an ARP request (who has TARGET, tell SENDER;
 * 10.0.0.1 and 10.0.0.2 by default); "net send 0xNNNN" a 60-byte frame of
 * that ethertype whose payload spells "volt-probe".
 */
static void net_send(struct vdev *d, char *arg)
{
	uint8_t *pkt = (uint8_t *)(d->mem + NET_TX_OFF);
	uint8_t *f = pkt + NET_HDR;
	memset(pkt, 0, NET_HDR + 60);
	memset(f, 0xff, 6);
	memcpy(f + 6, net_mac, 6);
	char *w = next_word(&arg);
	uint64_t type = 0x0806;
	uint8_t target[4] = {10, 0, 0, 1}, sender[4] = {10, 0, 0, 2};
	uint32_t len;
	if (streq(w, "") || streq(w, "arp")) {
		char *t = next_word(&arg), *s = next_word(&arg);
		if ((*t && !parse_ip(t, target)) || (*s && !parse_ip(s, sender))) {
			error("usage: net send [arp [TARGET-IP [SENDER-IP]] | 0xETHERTYPE]");
			return;
		}
		be16(f + 12, 0x0806);
		uint8_t *a = f + 14;
		be16(a, 1);			/* Ethernet */
		be16(a + 2, 0x0800);		/* IPv4 */
		a[4] = 6;
		a[5] = 4;
		be16(a + 6, 1);			/* request */
		memcpy(a + 8, net_mac, 6);
		memcpy(a + 14, sender, 4);
		memcpy(a + 24, target, 4);
		len = 42;
	} else if (parse_u64(w, &type) && type >= 0x600 && type <= 0xffff) {
		be16(f + 12, (uint16_t)type);
		memcpy(f + 14, "volt-probe", 10);
		len = 60;
	} else {
		error("usage: net send [arp [TARGET-IP [SENDER-IP]] | 0xETHERTYPE]");
		return;
	}
	struct vq *tx = &d->q[1];
	vq_set_desc(tx, 0, (uint64_t)pkt, NET_HDR + len, 0, 0);
	vq_publish(tx, 0);
	vq_kick(d, tx);
	uint32_t id, used;
	if (!wait_used(tx, &id, &used, 2 * TSC_SECOND)) {
		d->ready = 0;
		d->stale = 1;
		d->err = "transmit timed out";
		error("net send: the device did not take the frame");
		return;
	}
	put_str("net send len=");
	put_dec(len);
	put_str(" ethertype=0x");
	put_hex(type, 4);
	put_str(" src=");
	put_mac(net_mac);
	put_line();
}

/* "net recv [0xETHERTYPE]" waits about a second for a frame (of that
 * type; others are counted and dropped). */
static void net_recv(struct vdev *d, char *arg)
{
	char *w = next_word(&arg);
	uint64_t want = 0;
	if (*w && (!parse_u64(w, &want) || want > 0xffff)) {
		error("usage: net recv [0xETHERTYPE]");
		return;
	}
	struct vq *rx = &d->q[0];
	uint64_t start = rdtsc();
	unsigned skipped = 0;
	for (;;) {
		uint32_t id, len;
		if (!vq_take(rx, &id, &len)) {
			if (rdtsc() - start > TSC_SECOND) {
				error_start();
				put_str("net recv: no frame (");
				put_dec(skipped);
				put_str(" others)");
				put_line();
				return;
			}
			cpu_relax();
			continue;
		}
		if (id >= rx->size || len > NET_BUF) {
			error("net recv: the device returned a bad buffer");
			return;
		}
		const uint8_t *f = (const uint8_t *)(d->mem + (uint64_t)id * NET_BUF + NET_HDR);
		uint32_t flen = len >= NET_HDR ? len - NET_HDR : 0;
		uint16_t type = flen >= 14 ? (uint16_t)(f[12] << 8 | f[13]) : 0;
		int match = !want || type == want;
		if (match) {
			put_str("net recv len=");
			put_dec(flen);
			put_str(" ethertype=0x");
			put_hex(type, 4);
			if (flen >= 14) {
				put_str(" src=");
				put_mac(f + 6);
				put_str(" dst=");
				put_mac(f);
			}
			put_str(" hash=");
			put_hex64(word_hash(f, flen));
			put_line();
		} else {
			skipped++;
		}
		/* The buffer goes straight back to the device. */
		vq_publish(rx, (uint16_t)id);
		vq_kick(d, rx);
		if (match)
			return;
	}
}

static void net_command(char *arg)
{
	char *op = next_word(&arg);
	struct vdev *d = need(DEV_NET);
	if (!d)
		return;
	if (streq(op, "send"))
		net_send(d, arg);
	else if (streq(op, "recv"))
		net_recv(d, arg);
	else if (streq(op, "mac")) {
		put_str("net mac ");
		put_mac(net_mac);
		put_line();
	} else
		error("usage: net send|recv|mac ...");
}

/* ---- discovery ---------------------------------------------------------------- */

static int vdev_setup(struct vdev *d)
{
	switch (d->type) {
	case DEV_BLOCK: return blk_setup(d);
	case DEV_ENTROPY: return rng_setup(d);
	case DEV_NET: return net_setup(d);
	case DEV_VSOCK: return vsock_setup(d);
	}
	d->err = "no driver for this type";
	return -1;
}

/* virtio_up probes every declared slot and sets the devices up, once;
 * a device left unusable (a timeout) is set up again on its next use. */
int virtio_up(void)
{
	if (!devs_probed) {
		devs_probed = 1;
		for (int i = 0; i < ndevs; i++) {
			struct vdev *d = &devs[i];
			uint32_t magic = vr_read(d, VR_MAGIC);
			if (magic != VIRTIO_MAGIC) {
				d->err = "no virtio magic value";
				continue;
			}
			if (vr_read(d, VR_VERSION) != 2) {
				d->err = "not virtio-mmio version 2 (legacy)";
				continue;
			}
			d->type = vr_read(d, VR_DEVICE_ID);
			if (d->type == 0) {
				d->err = "no device in this slot";
				continue;
			}
			vdev_setup(d);
		}
	}
	for (int i = 0; i < ndevs; i++) {
		struct vdev *d = &devs[i];
		if (d->stale) {
			d->stale = 0;
			vdev_setup(d);
		}
	}
	return ndevs > 0;
}

struct vdev *vdev_of_type(uint32_t type)
{
	for (int i = 0; i < ndevs; i++)
		if (devs[i].type == type)
			return &devs[i];
	return 0;
}

static void list_devices(void)
{
	virtio_up();
	put_str("virtio devices=");
	put_dec((uint64_t)ndevs);
	put_line();
	for (int i = 0; i < ndevs; i++) {
		struct vdev *d = &devs[i];
		put_str("virtio ");
		put_dec((uint64_t)i);
		put_char(' ');
		put_str(type_name(d->type));
		put_str("@0x");
		put_hex(d->base, 8);
		put_str(" irq ");
		put_dec(d->irq);
		if (d->ready) {
			put_str(" features=0x");
			put_hex(d->features, 10);
		} else {
			put_str(" error: ");
			put_str(d->err ? d->err : "not set up");
		}
		put_line();
	}
}

/* ---- malformed chains ------------------------------------------------------------ */

/*
 * "virtio evil DEVICE KIND" puts one malformed chain on the device's
 * request queue (tx for net and vsock), waits for the device to give up
 * on it (DEVICE_NEEDS_RESET), prints the status it reads back and then
 * resets and sets the device up again, as a driver does.
 */
static void evil_command(char *arg)
{
	char *dev = next_word(&arg), *kind = next_word(&arg), *keep = next_word(&arg);
	static const char usage[] = "usage: virtio evil block|entropy|net|vsock loop|outside|order|indirect|head|idx [keep]";
	if (*keep && !streq(keep, "keep")) {
		error(usage);
		return;
	}
	uint32_t type;
	if (streq(dev, "block"))
		type = DEV_BLOCK;
	else if (streq(dev, "entropy"))
		type = DEV_ENTROPY;
	else if (streq(dev, "net"))
		type = DEV_NET;
	else if (streq(dev, "vsock"))
		type = DEV_VSOCK;
	else {
		error(usage);
		return;
	}
	struct vdev *d = need(type);
	if (!d)
		return;
	struct vq *q = &d->q[type == DEV_NET || type == DEV_VSOCK ? 1 : 0];
	uint16_t a = (uint16_t)(q->size - 2), b = (uint16_t)(q->size - 1);
	uint64_t buf = q->mem + 3072;	/* the free last quarter of the ring page */
	uint16_t dir = type == DEV_BLOCK || type == DEV_NET || type == DEV_VSOCK ? 0 : VRING_DESC_F_WRITE;
	int raw_avail = 0;
	if (streq(kind, "loop")) {
		vq_set_desc(q, a, buf, 16, VRING_DESC_F_NEXT | dir, b);
		vq_set_desc(q, b, buf + 16, 16, VRING_DESC_F_NEXT | dir, a);
	} else if (streq(kind, "outside")) {
		vq_set_desc(q, a, 0x10000000000ull, 512, dir, 0);	/* 1 TiB */
	} else if (streq(kind, "order")) {
		vq_set_desc(q, a, buf, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, b);
		vq_set_desc(q, b, buf + 16, 16, 0, 0);
	} else if (streq(kind, "indirect")) {
		/* A table of 24 bytes: not a whole number of descriptors. */
		memset((void *)buf, 0, 64);
		*(volatile uint64_t *)buf = buf + 32;
		*(volatile uint32_t *)(buf + 8) = 16;
		vq_set_desc(q, a, buf, 24, VRING_DESC_F_INDIRECT, 0);
	} else if (streq(kind, "head")) {
		a = (uint16_t)(q->size + 5);	/* no such descriptor */
	} else if (streq(kind, "idx")) {
		raw_avail = 1;
	} else {
		error(usage);
		return;
	}
	if (raw_avail) {
		/* avail.idx more than a queue ahead of what the device used. */
		q->avail_idx = (uint16_t)(q->avail_idx + q->size + 1);
		*(volatile uint16_t *)(vq_avail(q) + 2) = q->avail_idx;
	} else {
		vq_publish(q, a);
	}
	full_fence();
	vr_write(d, VR_QUEUE_NOTIFY, q->index);
	uint32_t status;
	uint64_t start = rdtsc();
	while (!((status = vr_read(d, VR_STATUS)) & ST_NEEDS_RESET) && rdtsc() - start < TSC_SECOND) {
		/* Each read is an exit: do not flood the VMM while it works. */
		for (int i = 0; i < 2000; i++)
			cpu_relax();
	}
	if (!(status & ST_NEEDS_RESET))
		cmd_status = 1;
	/* Take the device back, reset and set up again, unless asked to
	 * leave it broken (vsock then recovers by itself when idle). */
	int ok = 1;
	if (!*keep) {
		ok = vdev_setup(d) == 0 && d->ready;
		if (!ok)
			cmd_status = 1;
	}
	put_str("virtio evil ");
	put_str(dev);
	put_char(' ');
	put_str(kind);
	put_str(" status=0x");
	put_hex(status, 2);
	put_str(" needs_reset=");
	put_dec(!!(status & ST_NEEDS_RESET));
	put_str(" reinit=");
	put_str(*keep ? "no" : ok ? "ok" : "failed");
	put_line();
}

/* ---- commands ---------------------------------------------------------------------- */

int run_virtio_command(char *line)
{
	if (streq(line, "virtio")) {
		list_devices();
	} else if (has_prefix(line, "virtio evil ")) {
		evil_command(line + 12);
	} else if (has_prefix(line, "blk ") || streq(line, "blk")) {
		blk_command(line + 3);
	} else if (has_prefix(line, "rng ") || streq(line, "rng")) {
		rng_command(line + 3);
	} else if (has_prefix(line, "net ") || streq(line, "net")) {
		net_command(line + 3);
	} else if (has_prefix(line, "vsock ") || streq(line, "vsock")) {
		vsock_command(line + 5);
	} else if (has_prefix(line, "agent ") || streq(line, "agent")) {
		agent_command(line + 5);
	} else {
		return 0;
	}
	return 1;
}
