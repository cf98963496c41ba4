/*
 * Shared by the probe's ring-3 C files: port and memory access, output
 * formatting, parsing helpers, the TSC clock and the DMA area.
 *
 * Physical memory below 4 GiB is identity-mapped and user-accessible, so a
 * physical address is a usable pointer.
 */
#ifndef VOLT_PROBE_H
#define VOLT_PROBE_H

#include <stddef.h>
#include <stdint.h>

#define MAPPED_LIMIT	0x100000000ull	/* end of the identity map */
#define LINE_MAX	256

/* ---- low-level access ---------------------------------------------- */

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* Firmware tables are plain memory; unaligned little-endian loads are
 * fine on x86 and let the parsers take offsets straight from the specs. */
static inline uint8_t rd8(uint64_t pa) { return *(const volatile uint8_t *)pa; }
static inline uint16_t rd16(uint64_t pa) { return *(const volatile uint16_t *)pa; }
static inline uint32_t rd32(uint64_t pa) { return *(const volatile uint32_t *)pa; }
static inline uint64_t rd64(uint64_t pa) { return *(const volatile uint64_t *)pa; }
static inline void wr32(uint64_t pa, uint32_t v) { *(volatile uint32_t *)pa = v; }

/* The compiler must not move memory accesses across these; the CPU keeps
 * stores in order and loads in order (x86-TSO), but may let a load pass an
 * earlier store, which full_fence forbids. */
static inline void compiler_fence(void) { __asm__ volatile("" : : : "memory"); }
static inline void full_fence(void) { __asm__ volatile("mfence" : : : "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/*
 * Timeouts count TSC ticks. The probe does not calibrate the TSC; these
 * assume 1-4 GHz, so TSC_SECOND is "between a quarter of a second and a
 * second", which is all a timeout here needs.
 */
#define TSC_SECOND	4000000000ull

int mapped(uint64_t pa, uint64_t len);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

/* ---- output --------------------------------------------------------- */

/*
 * put_* build one line in a buffer; put_line ends it and hands it to the
 * current sink: the serial port, a capture buffer (the guest agent) or
 * nowhere (repeat). Lines starting "error: " go to the capture's error
 * stream.
 */
void put_str(const char *s);
void put_char(char c);
void put_dec(uint64_t v);
void put_hex64(uint64_t v);		/* 0x and 16 digits */
void put_hex(uint64_t v, int digits);	/* digits hex digits, no 0x */
void put_bytes_hex(const uint8_t *p, size_t n);
void put_line(void);
void error(const char *msg);		/* "error: MSG", marks the command failed */
void error_start(void);			/* "error: ", then put_*, then put_line */

/* cmd_status is the running command's exit status; error() and error_start() set it to 1. */
extern int cmd_status;

/* ---- parsing -------------------------------------------------------- */

int parse_u64(const char *s, uint64_t *out);	/* decimal, or 0x hex */
int has_prefix(const char *s, const char *p);
int streq(const char *a, const char *b);
/* next_word splits off the first space-separated word of *s in place and
 * returns it ("" at the end). */
char *next_word(char **s);

/* ---- hashing -------------------------------------------------------- */

/* FNV-1a over 64-bit little-endian words (a shorter tail is zero-padded),
 * the checksum every data-moving command prints. */
uint64_t word_hash(const void *p, size_t n);

/* ---- DMA area ------------------------------------------------------- */

/* Guest RAM for rings and buffers, outside the image: 2 MiB to 4 MiB. */
#define DMA_BASE	0x200000ull
#define DMA_END		0x400000ull

/* dma_alloc returns zeroed, page-aligned memory that lives for the rest
 * of the run, or 0 when the area is full or not RAM. */
uint64_t dma_alloc(uint64_t size);

/* ---- platform ------------------------------------------------------- */

uint64_t cmdline_addr(void);	/* 0 if the start info named none */
void pic_unmask(unsigned irq);	/* let a PIC line wake the wait gate */
void wait_for_interrupt(void);

/* ---- virtio (virtio.c, vsock.c) -------------------------------------- */

void virtio_parse_cmdline(uint64_t cmdline);
int run_virtio_command(char *line);	/* 1 if line was a virtio command */
void vsock_start_agent(uint32_t port);
void vsock_set_spin(uint64_t ticks);
/* vsock_idle is the serial console's wait: it serves vsock until input
 * may have arrived. 0 if there is no vsock to serve. */
int vsock_idle(void);
int vsock_run_pending(void);		/* agent requests waiting to run */

/* The command interpreter, for the agent and repeat. Returns the exit
 * status: 0, 1 (the command printed an error) or 127 (unknown). */
int run_command(char *line);

/* Output capture for the guest agent. */
struct capture {
	char *out, *err;
	size_t cap, out_len, err_len;
	int truncated;
};
void capture_begin(struct capture *c, struct capture **saved);
void capture_end(struct capture *saved);

#endif
