/*
 * Ring-3 part of the probe: platform discovery, device set-up and the
 * command loop. Everything here runs natively even where KVM emulates ring
 * 0, so this is where the work goes; only port I/O and MMIO exit to the VMM.
 * The virtio driver is in virtio.c and vsock.c.
 *
 * Physical memory below 4 GiB is identity-mapped and user-accessible, so a
 * physical address is a usable pointer.
 */
#include <stddef.h>
#include <stdint.h>

#include "marker.h"
#include "probe.h"

#define SCRATCH_BASE	0x400000ull	/* touch/sum area: 4 MiB */
#define PAGE_SIZE	4096ull

#define START_INFO_MAGIC 0x336ec578u
#define E820_RAM	1

#define COM1		0x3f8
#define UART_RBR	0
#define UART_THR	0
#define UART_DLL	0
#define UART_IER	1
#define UART_DLM	1
#define UART_FCR	2
#define UART_LCR	3
#define UART_MCR	4
#define UART_LSR	5
#define LSR_DR		0x01
#define LSR_THRE	0x20
#define UART_FIFO_LEN	16

#define PIC1_CMD	0x20
#define PIC1_DATA	0x21
#define PIC2_CMD	0xa0
#define PIC2_DATA	0xa1
#define PIC_VEC_BASE	0x20	/* boot.S: vectors 0x20-0x2f are the PIC's */
#define IRQ_CASCADE	2
#define IRQ_COM1	4

#define LAPIC_DEFAULT	0xfee00000u
#define LAPIC_SVR	0xf0
#define LAPIC_LVT0	0x350
#define LAPIC_LVT1	0x360
#define LAPIC_SPUR_VEC	0x3f	/* VEC_APIC_SPUR in boot.S */

#define I8042_CMD	0x64
#define I8042_RESET	0xfe

static inline void marker(uint8_t code)
{
	outb(MARKER_PORT, code);
}

int mapped(uint64_t pa, uint64_t len)
{
	return pa != 0 && pa < MAPPED_LIMIT && len <= MAPPED_LIMIT - pa;
}

static int bytes_sum_zero(uint64_t pa, uint64_t len)
{
	uint8_t s = 0;
	for (uint64_t i = 0; i < len; i++)
		s += rd8(pa + i);
	return s == 0;
}

/* gcc may emit calls to these even in freestanding code. String
 * instructions run natively in ring 3 and move the DMA buffers fast. */
void *memset(void *d, int c, size_t n)
{
	void *p = d;
	__asm__ volatile("rep stosb" : "+D"(p), "+c"(n) : "a"(c) : "memory");
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *p = d;
	__asm__ volatile("rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory");
	return d;
}

/* ---- serial ----------------------------------------------------------- */

static void uart_init(void)
{
	outb(COM1 + UART_IER, 0);
	outb(COM1 + UART_LCR, 0x80);		/* DLAB to reach the divisor */
	outb(COM1 + UART_DLL, 1);		/* 115200 baud */
	outb(COM1 + UART_DLM, 0);
	outb(COM1 + UART_LCR, 0x03);		/* 8N1 */
	outb(COM1 + UART_FCR, 0x07);		/* FIFOs on and cleared, RX trigger 1 */
	outb(COM1 + UART_MCR, 0x0b);		/* DTR, RTS, OUT2 (gates the IRQ on PCs) */
	outb(COM1 + UART_IER, 0x01);		/* interrupt on received data only */
}

/*
 * Waits for THRE (transmit FIFO empty) once per 16 bytes rather than per
 * byte: each LSR read is a VM exit, and an emulated UART that drops the
 * oldest byte of a full FIFO (QEMU does) would otherwise lose output.
 */
static void uart_write(const char *s, size_t n)
{
	while (n > 0) {
		while (!(inb(COM1 + UART_LSR) & LSR_THRE))
			;
		size_t chunk = n < UART_FIFO_LEN ? n : UART_FIFO_LEN;
		for (size_t i = 0; i < chunk; i++)
			outb(COM1 + UART_THR, (uint8_t)s[i]);
		s += chunk;
		n -= chunk;
	}
}

/* Ring 3 may not hlt; the int $0x80 gate does sti; hlt; cli for it. */
/* Ring 3 may not hlt; the int $0x80 gate does sti; hlt; cli for it. */
void wait_for_interrupt(void)
{
	__asm__ volatile("int $0x80" : : : "memory");
}

/*
 * Waits for a byte. With a vsock device to serve, vsock_idle spins on its
 * rings and sleeps until its interrupt or the UART's; it returns whenever
 * the UART may have data.
 */
static uint8_t uart_getc(void)
{
	for (;;) {
		if (inb(COM1 + UART_LSR) & LSR_DR)
			return inb(COM1 + UART_RBR);
		if (!vsock_idle())
			wait_for_interrupt();
	}
}

/* ---- output formatting -------------------------------------------------- */

static char out_buf[LINE_MAX + 64];
static size_t out_len;
int cmd_status;

/* The sink of put_line: the UART when sink is 0, else a capture (whose
 * out is 0 for "discard"). */
static struct capture *sink;

void capture_begin(struct capture *c, struct capture **saved)
{
	*saved = sink;
	sink = c;
}

void capture_end(struct capture *saved)
{
	sink = saved;
}

void put_char(char c)
{
	if (out_len < sizeof(out_buf) - 1)
		out_buf[out_len++] = c;
}

void put_str(const char *s)
{
	while (*s)
		put_char(*s++);
}

void put_dec(uint64_t v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (n > 0)
		put_char(tmp[--n]);
}

void put_hex(uint64_t v, int digits)
{
	static const char hex[] = "0123456789abcdef";
	for (int shift = 4 * (digits - 1); shift >= 0; shift -= 4)
		put_char(hex[(v >> shift) & 0xf]);
}

void put_hex64(uint64_t v)
{
	put_str("0x");
	put_hex(v, 16);
}

void put_bytes_hex(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		put_hex(p[i], 2);
}

static void capture_append(char *dst, size_t *len, size_t cap, int *truncated)
{
	if (*len + out_len > cap) {
		*truncated = 1;
		return;
	}
	memcpy(dst + *len, out_buf, out_len);
	*len += out_len;
}

/* Lines end in "\n" only; hosts must accept that. */
void put_line(void)
{
	out_buf[out_len++] = '\n';
	if (!sink) {
		uart_write(out_buf, out_len);
	} else if (sink->out) {
		if (out_len >= 7 && has_prefix(out_buf, "error: "))
			capture_append(sink->err, &sink->err_len, sink->cap, &sink->truncated);
		else
			capture_append(sink->out, &sink->out_len, sink->cap, &sink->truncated);
	}
	out_len = 0;
}

void error_start(void)
{
	cmd_status = 1;
	put_str("error: ");
}

void error(const char *msg)
{
	error_start();
	put_str(msg);
	put_line();
}

/* ---- parsing and hashing ------------------------------------------------- */

int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (*s == 0)
		return 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		if (*s == 0)
			return 0;
		for (; *s; s++) {
			unsigned d;
			if (*s >= '0' && *s <= '9')
				d = (unsigned)(*s - '0');
			else if (*s >= 'a' && *s <= 'f')
				d = (unsigned)(*s - 'a' + 10);
			else if (*s >= 'A' && *s <= 'F')
				d = (unsigned)(*s - 'A' + 10);
			else
				return 0;
			if (v >> 60)
				return 0;
			v = v << 4 | d;
		}
		*out = v;
		return 1;
	}
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
			return 0;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 1;
}

int has_prefix(const char *s, const char *p)
{
	while (*p)
		if (*s++ != *p++)
			return 0;
	return 1;
}

int streq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

char *next_word(char **s)
{
	char *p = *s;
	while (*p == ' ')
		p++;
	char *w = p;
	while (*p && *p != ' ')
		p++;
	if (*p)
		*p++ = 0;
	*s = p;
	return w;
}

uint64_t word_hash(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, b + i, 8);
		h = (h ^ w) * 0x100000001b3ull;
	}
	if (i < n) {
		uint64_t w = 0;
		memcpy(&w, b + i, n - i);
		h = (h ^ w) * 0x100000001b3ull;
	}
	return h;
}

/* ---- platform discovery -------------------------------------------------- */

static struct {
	uint32_t cpus;
	uint64_t ram_bytes;
	uint64_t scratch_end;	/* end of the RAM run holding SCRATCH_BASE */
	uint64_t rsdp;		/* from hvm_start_info, 0 if none */
	uint64_t lapic;
	uint64_t cmdline;	/* from hvm_start_info, 0 if none */
	int dma_ok;		/* DMA_BASE..DMA_END is RAM */
	int auto_poweroff;	/* "probe.poweroff" on the command line */
	int agent;		/* "probe.agent[=PORT]" on the command line */
	uint32_t agent_port;
	uint8_t pic_mask[2];	/* masked PIC lines, master and slave */
} plat;

uint64_t cmdline_addr(void)
{
	return plat.cmdline;
}


/*
 * has_token reports whether the NUL-terminated command line at cmdline
 * holds word as a whole space-separated token. Reads stop at the first
 * unmapped byte or after 4 KiB, whichever comes first.
 */
static int has_token(uint64_t cmdline, const char *word)
{
	const uint64_t max = 4096;
	uint64_t i = 0;
	while (i < max && mapped(cmdline + i, 1)) {
		while (i < max && mapped(cmdline + i, 1) && rd8(cmdline + i) == ' ')
			i++;
		uint64_t j = 0;
		while (word[j] && i + j < max && mapped(cmdline + i + j, 1) &&
		       rd8(cmdline + i + j) == (uint8_t)word[j])
			j++;
		uint8_t next = (i + j < max && mapped(cmdline + i + j, 1)) ? rd8(cmdline + i + j) : 0;
		if (!word[j] && (next == ' ' || next == 0))
			return 1;
		while (i < max && mapped(cmdline + i, 1) && rd8(cmdline + i) != ' ' && rd8(cmdline + i) != 0)
			i++;
		if (i >= max || !mapped(cmdline + i, 1) || rd8(cmdline + i) == 0)
			return 0;
	}
	return 0;
}


/*
 * token_u64 finds "KEY=NUMBER" (KEY ending in '=') as a whole token of the
 * command line and reads the decimal NUMBER (at most 20 digits).
 */
static int token_u64(uint64_t cmdline, const char *key, uint64_t *out)
{
	for (uint64_t i = 0; i < 4096 && mapped(cmdline + i, 1) && rd8(cmdline + i); i++) {
		if (i > 0 && rd8(cmdline + i - 1) != ' ')
			continue;
		size_t j = 0;
		while (key[j] && mapped(cmdline + i + j, 1) && rd8(cmdline + i + j) == (uint8_t)key[j])
			j++;
		if (key[j])
			continue;
		uint64_t v = 0;
		int digits = 0;
		uint64_t p = cmdline + i + j;
		for (; mapped(p, 1) && rd8(p) >= '0' && rd8(p) <= '9' && digits < 20; p++, digits++) {
			if (v > (UINT64_MAX - 9) / 10)
				return 0;
			v = v * 10 + (rd8(p) - '0');
		}
		if (!digits || (mapped(p, 1) && rd8(p) != ' ' && rd8(p) != 0))
			return 0;
		*out = v;
		return 1;
	}
	return 0;
}

/* "probe.agent" (port 10240, the guest agent's) or "probe.agent=PORT";
 * "probe.spin=TICKS" sets vsock's spin. */
static void probe_tokens(uint64_t cmdline)
{
	uint64_t v;
	if (has_token(cmdline, "probe.agent")) {
		plat.agent = 1;
		plat.agent_port = 10240;
	} else if (token_u64(cmdline, "probe.agent=", &v) && v <= 0xffffffffu) {
		plat.agent = 1;
		plat.agent_port = (uint32_t)v;
	}
	if (token_u64(cmdline, "probe.spin=", &v))
		vsock_set_spin(v);
}

/* ram_run_end is the end of the RAM run holding start, joining adjacent
 * memory-map entries (start itself if it is not RAM). */
static uint64_t ram_run_end(uint64_t map, uint32_t n, uint64_t start)
{
	uint64_t end = start;
	for (int grew = 1; grew;) {
		grew = 0;
		for (uint32_t i = 0; i < n; i++) {
			uint64_t e = map + (uint64_t)i * 24;
			uint64_t a = rd64(e), sz = rd64(e + 8);
			if (rd32(e + 16) == E820_RAM && a <= end && end < a + sz) {
				end = a + sz;
				grew = 1;
			}
		}
	}
	return end < MAPPED_LIMIT ? end : MAPPED_LIMIT;
}

static void read_start_info(uint64_t info)
{
	if (!mapped(info, 56) || rd32(info) != START_INFO_MAGIC)
		return;
	plat.rsdp = rd64(info + 32);
	uint64_t cmdline = rd64(info + 24);
	if (cmdline && mapped(cmdline, 1)) {
		plat.cmdline = cmdline;
		plat.auto_poweroff = has_token(cmdline, "probe.poweroff");
		probe_tokens(cmdline);
	}
	if (rd32(info + 4) < 1)
		return;			/* version 0 has no memory map */
	uint64_t map = rd64(info + 40);
	uint32_t n = rd32(info + 48);
	if (n > 1024 || !mapped(map, (uint64_t)n * 24))
		return;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t e = map + (uint64_t)i * 24;
		if (rd32(e + 16) == E820_RAM)
			plat.ram_bytes += rd64(e + 8);
	}
	/* touch refuses to run off the end of RAM; the virtio rings and
	 * buffers need all of the DMA area. */
	plat.scratch_end = ram_run_end(map, n, SCRATCH_BASE);
	plat.dma_ok = ram_run_end(map, n, DMA_BASE) >= DMA_END;
}

/* MP spec 1.4, section 4: the floating pointer lies on a 16-byte boundary. */
static uint64_t mp_search(uint64_t base, uint64_t len)
{
	for (uint64_t a = base; a + 16 <= base + len; a += 16) {
		if (rd32(a) != 0x5f504d5f)	/* "_MP_" */
			continue;
		uint8_t units = rd8(a + 8);
		if (units >= 1 && bytes_sum_zero(a, 16ull * units))
			return a;
	}
	return 0;
}

static uint64_t ebda_base(void)
{
	uint64_t ebda = (uint64_t)rd16(0x40e) << 4;
	return (ebda >= 0x500 && ebda < 0xa0000) ? ebda : 0;
}

static uint32_t mp_cpus(void)
{
	uint64_t fp = 0, ebda = ebda_base();
	if (ebda)
		fp = mp_search(ebda, 1024);
	if (!fp) {
		uint64_t kib = rd16(0x413);
		if (kib < 64 || kib > 640)
			kib = 640;
		fp = mp_search(kib * 1024 - 1024, 1024);
	}
	if (!fp)
		fp = mp_search(0xf0000, 0x10000);
	if (!fp)
		return 0;
	/* A default configuration (feature byte 1 != 0) has no table and,
	 * by definition in the spec, two processors. */
	if (rd8(fp + 11) != 0)
		return 2;
	uint64_t cfg = rd32(fp + 4);
	if (!mapped(cfg, 44) || rd32(cfg) != 0x504d4350)	/* "PCMP" */
		return 0;
	uint16_t len = rd16(cfg + 4);
	if (len < 44 || !mapped(cfg, len) || !bytes_sum_zero(cfg, len))
		return 0;
	plat.lapic = rd32(cfg + 36);
	uint32_t cpus = 0;
	uint64_t p = cfg + 44, end = cfg + len;
	/* Walk by the table length, not the entry count: QEMU microvm's
	 * firmware (qboot) leaves the count at 0. */
	while (p < end) {
		uint8_t type = rd8(p);
		if (type == 0) {		/* processor; flags bit 0 = enabled */
			if (rd8(p + 3) & 1)
				cpus++;
			p += 20;
		} else if (type <= 4) {
			p += 8;
		} else {
			break;			/* unknown entry: length unknown */
		}
	}
	return cpus;
}

static int rsdp_valid(uint64_t a)
{
	if (!mapped(a, 36) || rd64(a) != 0x2052545020445352ull)	/* "RSD PTR " */
		return 0;
	if (!bytes_sum_zero(a, 20))
		return 0;
	return rd8(a + 15) < 2 || bytes_sum_zero(a, 36);
}

static uint64_t rsdp_search(uint64_t base, uint64_t len)
{
	for (uint64_t a = base; a + 36 <= base + len; a += 16)
		if (rsdp_valid(a))
			return a;
	return 0;
}

static uint64_t acpi_rsdp(void)
{
	if (rsdp_valid(plat.rsdp))
		return plat.rsdp;
	uint64_t a = 0, ebda = ebda_base();
	if (ebda)
		a = rsdp_search(ebda, 1024);
	if (!a)
		a = rsdp_search(0xe0000, 0x20000);
	return a;
}

static int acpi_table_valid(uint64_t t)
{
	if (!mapped(t, 36))
		return 0;
	uint32_t len = rd32(t + 4);
	return len >= 36 && mapped(t, len) && bytes_sum_zero(t, len);
}

static uint64_t acpi_table(uint64_t rsdp, uint32_t sig)
{
	if (!rsdp)
		return 0;
	uint64_t root = 0;
	unsigned width = 4;
	if (rd8(rsdp + 15) >= 2 && acpi_table_valid(rd64(rsdp + 24))) {
		root = rd64(rsdp + 24);		/* XSDT: 64-bit entries */
		width = 8;
	} else if (acpi_table_valid(rd32(rsdp + 16))) {
		root = rd32(rsdp + 16);		/* RSDT: 32-bit entries */
	}
	if (!root)
		return 0;
	uint32_t len = rd32(root + 4);
	for (uint64_t p = root + 36; p + width <= root + len; p += width) {
		uint64_t t = width == 8 ? rd64(p) : rd32(p);
		if (acpi_table_valid(t) && rd32(t) == sig)
			return t;
	}
	return 0;
}

static uint32_t madt_cpus(void)
{
	uint64_t madt = acpi_table(acpi_rsdp(), 0x43495041);	/* "APIC" */
	if (!madt)
		return 0;
	if (!plat.lapic)
		plat.lapic = rd32(madt + 36);
	uint32_t cpus = 0;
	uint64_t end = madt + rd32(madt + 4);
	for (uint64_t p = madt + 44; p + 2 <= end;) {
		uint8_t type = rd8(p), len = rd8(p + 1);
		if (len < 2 || p + len > end)
			break;
		if (type == 0 && len >= 8 && (rd32(p + 4) & 1))	/* local APIC */
			cpus++;
		if (type == 9 && len >= 16 && (rd32(p + 8) & 1))	/* local x2APIC */
			cpus++;
		p += len;
	}
	return cpus;
}

/* ---- interrupts ------------------------------------------------------ */

static void pic_init(void)
{
	outb(PIC1_CMD, 0x11);			/* ICW1: edge, cascade, ICW4 */
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, PIC_VEC_BASE);		/* ICW2: off the CPU exceptions */
	outb(PIC2_DATA, PIC_VEC_BASE + 8);
	outb(PIC1_DATA, 0x04);			/* ICW3: slave on IRQ 2 */
	outb(PIC2_DATA, 0x02);
	outb(PIC1_DATA, 0x01);			/* ICW4: 8086 mode */
	outb(PIC2_DATA, 0x01);
	plat.pic_mask[0] = (uint8_t)~(1u << IRQ_COM1);
	plat.pic_mask[1] = 0xff;
	outb(PIC1_DATA, plat.pic_mask[0]);
	outb(PIC2_DATA, plat.pic_mask[1]);
}

/*
 * pic_unmask lets a device's PIC line interrupt the wait gate (boot.S
 * acknowledges every PIC vector). Lines on the slave need the cascade.
 */
void pic_unmask(unsigned irq)
{
	if (irq >= 16 || irq == IRQ_CASCADE)
		return;
	if (irq < 8) {
		plat.pic_mask[0] &= (uint8_t)~(1u << irq);
	} else {
		plat.pic_mask[1] &= (uint8_t)~(1u << (irq - 8));
		plat.pic_mask[0] &= (uint8_t)~(1u << IRQ_CASCADE);
		outb(PIC2_DATA, plat.pic_mask[1]);
	}
	outb(PIC1_DATA, plat.pic_mask[0]);
}

/*
 * KVM hands PIC interrupts to the BSP through LAPIC LINT0 only while LVT0
 * is unmasked ExtINT. That is the reset state, but a VMM or firmware that
 * loads LAPIC state may have left something else there, so set it here
 * (two MMIO writes, handled inside KVM) rather than depend on it.
 */
static void lapic_init(void)
{
	uint64_t base = plat.lapic ? plat.lapic : LAPIC_DEFAULT;
	if (!mapped(base, 0x1000))
		return;
	volatile uint32_t *r = (volatile uint32_t *)base;
	r[LAPIC_SVR / 4] = 0x100 | LAPIC_SPUR_VEC;	/* software-enable */
	r[LAPIC_LVT0 / 4] = 0x700;			/* ExtINT, unmasked */
	r[LAPIC_LVT1 / 4] = 0x400;			/* NMI */
}

/* ---- commands -------------------------------------------------------- */

/* The pattern depends on the address, so every page differs and a page
 * restored to the wrong place changes the sum. */
static inline uint64_t pattern(uint64_t addr)
{
	uint64_t v = (addr ^ 0x5bd1e9955bd1e995ull) * 0x9e3779b97f4a7c15ull;
	return v ^ (v >> 31);
}

static inline uint64_t mix(uint64_t h, uint64_t v)
{
	return (h ^ v) * 0x100000001b3ull;
}

static uint64_t scratch(uint64_t pages, int write)
{
	uint64_t h = 0xcbf29ce484222325ull;
	uint64_t end = SCRATCH_BASE + pages * PAGE_SIZE;
	for (uint64_t a = SCRATCH_BASE; a < end; a += 8) {
		volatile uint64_t *q = (volatile uint64_t *)a;
		if (write)
			*q = pattern(a);
		h = mix(h, *q);
	}
	return h;
}

/* ---- DMA area -------------------------------------------------------- */

static uint64_t dma_next = DMA_BASE;

uint64_t dma_alloc(uint64_t size)
{
	size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	if (!plat.dma_ok || size > DMA_END - dma_next)
		return 0;
	uint64_t a = dma_next;
	dma_next += size;
	memset((void *)a, 0, size);
	return a;
}

static void cmd_scratch(const char *arg, int write)
{
	uint64_t n;
	if (!parse_u64(arg, &n)) {
		error("expected a page count");
		return;
	}
	if (plat.scratch_end <= SCRATCH_BASE) {
		error("no RAM at 4 MiB in the memory map");
		return;
	}
	uint64_t max = (plat.scratch_end - SCRATCH_BASE) / PAGE_SIZE;
	if (n > max) {
		error_start();
		put_dec(n);
		put_str(" pages run past RAM (at most ");
		put_dec(max);
		put_str(")");
		put_line();
		return;
	}
	uint64_t h = scratch(n, write);
	put_str(write ? "touched " : "sum ");
	put_dec(n);
	put_str(" sum=");
	put_hex64(h);
	put_line();
}

static void spin_tsc(uint64_t ticks)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	uint64_t start = ((uint64_t)hi << 32) | lo, now;
	do {
		__asm__ volatile("pause; rdtsc" : "=a"(lo), "=d"(hi));
		now = ((uint64_t)hi << 32) | lo;
	} while (now - start < ticks);
}

static void acpi_poweroff(void)
{
	uint64_t fadt = acpi_table(acpi_rsdp(), 0x50434146);	/* "FACP" */
	if (!fadt || rd32(fadt + 4) < 256)
		return;
	if (!(rd32(fadt + 112) & (1u << 20)))	/* HW_REDUCED_ACPI */
		return;
	uint8_t space = rd8(fadt + 244);	/* SLEEP_CONTROL_REG (GAS) */
	uint64_t reg = rd64(fadt + 248);
	uint8_t val = (5 << 2) | (1 << 5);	/* SLP_TYP=5 (S5), SLP_EN */
	if (space == 0 && mapped(reg, 1))
		*(volatile uint8_t *)reg = val;
	else if (space == 1 && reg != 0 && reg <= 0xffff)
		outb((uint16_t)reg, val);
	else
		return;
	/* QEMU completes the shutdown asynchronously; give it time before
	 * trying the next method (~0.1 s at any plausible TSC rate). */
	spin_tsc(300000000ull);
}

/* Reset the machine the way a PC reboots, through the i8042. */
/* Reset the machine the way a PC reboots, through the i8042. */
static void reset_machine(void)
{
	outb(I8042_CMD, I8042_RESET);
	spin_tsc(300000000ull);
	__asm__ volatile("int $0x81");	/* triple fault */
	for (;;)
		wait_for_interrupt();
}

/*
 * "reset" reboots without announcing a shutdown, and "panic" writes the
 * kernel-panic marker first, as Volt's Linux does from panic(): the VMM
 * must report both as what they are, never as a clean power-off. Their
 * lines go to the console even when the agent asked: nobody will read
 * the agent's answer.
 */
static void cmd_reset(int panic)
{
	if (panic)
		marker(MARKER_KERNEL_PANIC);
	sink = 0;
	put_str(panic ? "volt-probe: panic" : "volt-probe: reset");
	put_line();
	reset_machine();
}

static void cmd_poweroff(void)
{
	marker(MARKER_SHUTDOWN);
	sink = 0;
	put_str("volt-probe: poweroff");
	put_line();
	acpi_poweroff();
	/* A VMM without ACPI ends the VM here. */
	reset_machine();
}

/*
 * Volt's generation-ID device (vmm/devices/genid): 16 bytes at ports
 * 0xf00-0xf0f that change on every restore from a snapshot. Under a VMM
 * without it the ports read as 0xff.
 */
#define GENID_PORT 0x0f00
#define GENID_SIZE 16

static void cmd_gen(void)
{
	static const char hex[] = "0123456789abcdef";
	char out[2 * GENID_SIZE + 1];
	for (int i = 0; i < GENID_SIZE; i++) {
		uint8_t b = inb((uint16_t)(GENID_PORT + i));
		out[2 * i] = hex[b >> 4];
		out[2 * i + 1] = hex[b & 15];
	}
	out[2 * GENID_SIZE] = 0;
	put_str("gen ");
	put_str(out);
	put_line();
}

/*
 * A log-linear histogram of TSC ticks: eight buckets per power of two, so
 * a percentile read from it is within 12.5% (below 8 ticks, exact).
 */
#define HIST_BUCKETS 512
static uint32_t hist[HIST_BUCKETS];

static unsigned hist_index(uint64_t v)
{
	if (v < 8)
		return (unsigned)v;
	unsigned e = 63 - (unsigned)__builtin_clzll(v);	/* e >= 3 */
	return (e - 2) * 8 + (unsigned)((v >> (e - 3)) & 7);
}

static uint64_t hist_value(unsigned i)
{
	if (i < 8)
		return i;
	unsigned e = i / 8 + 2, m = i % 8;
	return (uint64_t)(8 + m) << (e - 3);
}

static uint64_t hist_percentile(uint64_t n, unsigned pct)
{
	uint64_t want = (n * pct + 99) / 100, seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += hist[i];
		if (seen >= want && seen > 0)
			return hist_value(i);
	}
	return 0;
}

/*
 * "repeat N COMMAND" runs COMMAND N times with its output discarded and
 * prints how many runs succeeded and how long they took in TSC ticks (the
 * whole, the fastest, the median and the 90th percentile run, the last
 * two within 12.5%): benchmarks time N device requests from the host
 * without N console lines in the measurement, and read the guest's own
 * view of each request.
 */
static void cmd_repeat(char *arg)
{
	char *n_str = next_word(&arg);
	uint64_t n;
	if (!parse_u64(n_str, &n) || n == 0 || *arg == 0) {
		error("usage: repeat N COMMAND");
		return;
	}
	static char copy[LINE_MAX + 1];
	size_t len = 0;
	while (arg[len] && len < LINE_MAX)
		len++;
	struct capture discard = {0}, *saved;
	uint64_t ok = 0, min = UINT64_MAX;
	memset(hist, 0, sizeof(hist));
	capture_begin(&discard, &saved);
	uint64_t start = rdtsc(), prev = start;
	for (uint64_t i = 0; i < n; i++) {
		/* Commands split their argument in place: each run gets a
		 * fresh copy. */
		memcpy(copy, arg, len);
		copy[len] = 0;
		if (run_command(copy) == 0)
			ok++;
		uint64_t now = rdtsc(), d = now - prev;
		prev = now;
		if (d < min)
			min = d;
		hist[hist_index(d)]++;
	}
	capture_end(saved);
	cmd_status = ok == n ? 0 : 1;
	put_str("repeat ");
	put_dec(n);
	put_str(" ok=");
	put_dec(ok);
	put_str(" ticks=");
	put_dec(prev - start);
	put_str(" min=");
	put_dec(min);
	put_str(" p50=");
	put_dec(hist_percentile(n, 50));
	put_str(" p90=");
	put_dec(hist_percentile(n, 90));
	put_line();
}

int run_command(char *line)
{
	int saved = cmd_status;
	cmd_status = 0;
	if (streq(line, "echo")) {
		put_line();
	} else if (has_prefix(line, "echo ")) {
		put_str(line + 5);
		put_line();
	} else if (has_prefix(line, "touch ")) {
		cmd_scratch(line + 6, 1);
	} else if (has_prefix(line, "sum ")) {
		cmd_scratch(line + 4, 0);
	} else if (streq(line, "cpus")) {
		put_str("cpus ");
		put_dec(plat.cpus);
		put_line();
	} else if (streq(line, "gen")) {
		cmd_gen();
	} else if (has_prefix(line, "repeat ")) {
		cmd_repeat(line + 7);
	} else if (streq(line, "poweroff")) {
		cmd_poweroff();
	} else if (streq(line, "reset")) {
		cmd_reset(0);
	} else if (streq(line, "panic")) {
		cmd_reset(1);
	} else if (!run_virtio_command(line)) {
		error("unknown command");
		cmd_status = 127;
	}
	int status = cmd_status;
	cmd_status = saved;
	return status;
}

/* ---- entry ---------------------------------------------------------- */

void probe_main(uint64_t start_info);

void probe_main(uint64_t start_info)
{
	/*
	 * The "kernel" stage of discovery runs here in ring 3, natively,
	 * before MARKER_PID1: scanning the BIOS area in emulated ring 0
	 * would cost tens of milliseconds.
	 */
	read_start_info(start_info);
	plat.cpus = mp_cpus();
	if (!plat.cpus)
		plat.cpus = madt_cpus();
	if (!plat.cpus)
		plat.cpus = 1;
	if (plat.cmdline)
		virtio_parse_cmdline(plat.cmdline);
	marker(MARKER_KERNEL_DEVICES);
	marker(MARKER_PID1);

	pic_init();
	lapic_init();
	uart_init();
	put_str("volt-probe: booted cpus=");
	put_dec(plat.cpus);
	put_str(" mem=");
	put_dec(plat.ram_bytes >> 20);
	put_line();
	if (plat.agent)
		vsock_start_agent(plat.agent_port);
	put_str("volt-probe: ready");
	put_line();
	marker(MARKER_READY);
	if (plat.auto_poweroff)
		cmd_poweroff();	/* boot-to-exit timing without a console driver */

	static char line[LINE_MAX + 1];
	size_t len = 0;
	int overflow = 0;
	for (;;) {
		char c = (char)uart_getc();
		if (c != '\r' && c != '\n') {
			if (len < LINE_MAX)
				line[len++] = c;
			else
				overflow = 1;
			continue;
		}
		/* "\r\n" yields an empty line, which is ignored. */
		while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
			len--;
		line[len] = 0;
		if (overflow)
			error("line too long");
		else if (len > 0)
			run_command(line);
		len = 0;
		overflow = 0;
	}
}
