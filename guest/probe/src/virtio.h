/*
 * The probe's virtio-mmio driver (virtio 1.2 §4.2, version 2 only), shared
 * by virtio.c (transport, block, entropy, net, malformed chains) and
 * vsock.c. Split virtqueues live in the DMA area; the driver polls the
 * used rings and only vsock sleeps on its interrupt.
 */
#ifndef VOLT_PROBE_VIRTIO_H
#define VOLT_PROBE_VIRTIO_H

#include <stdint.h>

/* MMIO registers (§4.2.2). */
#define VR_MAGIC		0x000
#define VR_VERSION		0x004
#define VR_DEVICE_ID		0x008
#define VR_DEVICE_FEATURES	0x010
#define VR_DEVICE_FEATURES_SEL	0x014
#define VR_DRIVER_FEATURES	0x020
#define VR_DRIVER_FEATURES_SEL	0x024
#define VR_QUEUE_SEL		0x030
#define VR_QUEUE_NUM_MAX	0x034
#define VR_QUEUE_NUM		0x038
#define VR_QUEUE_READY		0x044
#define VR_QUEUE_NOTIFY		0x050
#define VR_INTERRUPT_STATUS	0x060
#define VR_INTERRUPT_ACK	0x064
#define VR_STATUS		0x070
#define VR_QUEUE_DESC_LOW	0x080
#define VR_QUEUE_DESC_HIGH	0x084
#define VR_QUEUE_DRIVER_LOW	0x090
#define VR_QUEUE_DRIVER_HIGH	0x094
#define VR_QUEUE_DEVICE_LOW	0x0a0
#define VR_QUEUE_DEVICE_HIGH	0x0a4
#define VR_CONFIG		0x100

#define VIRTIO_MAGIC		0x74726976	/* "virt" */

/* Status bits (§2.1). */
#define ST_ACKNOWLEDGE		1
#define ST_DRIVER		2
#define ST_DRIVER_OK		4
#define ST_FEATURES_OK		8
#define ST_NEEDS_RESET		64
#define ST_FAILED		128

/* Feature bits. */
#define F_INDIRECT_DESC		(1ull << 28)
#define F_VERSION_1		(1ull << 32)

/* Device IDs (§5). */
#define DEV_NET			1
#define DEV_BLOCK		2
#define DEV_ENTROPY		4
#define DEV_VSOCK		19

/* Descriptor flags (§2.7.5) and ring flags. */
#define VRING_DESC_F_NEXT	1
#define VRING_DESC_F_WRITE	2
#define VRING_DESC_F_INDIRECT	4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY	1

/* Every queue is one page: the descriptor table, then the available ring
 * at +1 KiB and the used ring at +2 KiB, which holds up to 64 entries. */
#define VQ_MAX			64
#define VQ_AVAIL_OFF		1024
#define VQ_USED_OFF		2048

struct vq {
	uint16_t index, size;
	uint16_t avail_idx;	/* the next avail.idx to publish */
	uint16_t used_seen;	/* used entries consumed */
	uint64_t mem;		/* the ring page; kept across resets */
};

#define VDEV_MAX		17	/* volt-vmm's slots */
#define VDEV_QUEUES		3

struct vdev {
	int slot;
	uint64_t base, size;
	uint32_t irq;
	uint32_t type;		/* DeviceID; 0: none found */
	uint64_t features;	/* negotiated */
	int ready;		/* DRIVER_OK set, usable */
	const char *err;	/* why it is not ready */
	int stale;		/* a request timed out: set it up again before use */
	struct vq q[VDEV_QUEUES];
	int nq;
	uint64_t mem;		/* device buffers, allocated at first set-up */
};

/* Register access: every call is one VM exit. */
static inline uint32_t vr_read(const struct vdev *d, uint32_t off)
{
	return *(volatile uint32_t *)(d->base + off);
}

static inline void vr_write(const struct vdev *d, uint32_t off, uint32_t v)
{
	*(volatile uint32_t *)(d->base + off) = v;
}

/* Ring layout helpers. */
static inline uint64_t vq_desc_addr(const struct vq *q, uint16_t i) { return q->mem + 16ull * i; }
static inline uint64_t vq_avail(const struct vq *q) { return q->mem + VQ_AVAIL_OFF; }
static inline uint64_t vq_used(const struct vq *q) { return q->mem + VQ_USED_OFF; }

void vq_set_desc(struct vq *q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);
void vq_publish(struct vq *q, uint16_t head);
void vq_kick(struct vdev *d, struct vq *q);
int vq_pending(const struct vq *q);			/* used entries not yet taken */
int vq_take(struct vq *q, uint32_t *id, uint32_t *len);	/* 1 if one was taken */
void vq_set_interrupts(struct vq *q, int on);

/* Transport set-up (§3.1.1): negotiate returns 0 on success, with
 * d->features set; queue set-up, then driver_ok. Each sets d->err. */
int vdev_negotiate(struct vdev *d, uint64_t wanted);
int vdev_queue(struct vdev *d, int n, uint16_t index, uint16_t want_size);
int vdev_driver_ok(struct vdev *d);
void vdev_fail(struct vdev *d, const char *why);
uint32_t vdev_config32(const struct vdev *d, uint32_t off);

/* vsock.c */
int vsock_setup(struct vdev *d);	/* at every (re)initialisation */
void vsock_command(char *arg);		/* "vsock ..." */
void agent_command(char *arg);		/* "agent [PORT]" */
void vsock_status(void);

struct vdev *vdev_of_type(uint32_t type);
int virtio_up(void);

#endif
