//go:build ignore

/*
 * floor-kvm: the least a VMM must do before its guest runs, and nothing else.
 *
 *   floor-kvm [boot|answer] [MEMORY_MIB]
 *
 * It issues the ioctls voltbench's eBPF program times, in a VMM's order:
 * KVM_CREATE_VM, one KVM_SET_USER_MEMORY_REGION (anonymous memory of
 * MEMORY_MIB, default 128, at guest-physical 0), KVM_CREATE_VCPU, then
 * KVM_RUN of a real-mode guest of a few instructions that announces what the
 * benchmark's rows time and halts:
 *
 *   boot    marker 0x40 (kernel-entry), 0x60 (pid1), one byte to COM1
 *           (first-output), 0x61 (ready), one more byte (the answer), hlt:
 *           the order the probe guest writes them in;
 *   answer  one byte to COM1, hlt: a restored guest's first answer, with no
 *           boot markers.
 *
 * So the same stage rows apply to it and to a real VMM, and a row's distance
 * to this floor is what that VMM and its guest add. It is C, statically
 * linked, with no runtime to start: a Go VMM's floor is higher by the Go
 * runtime's start-up, which voltbench's exec floors show on their own.
 * No in-kernel irqchip, PIT, TSS, CPUID or MSRs: every OUT and the HLT exit
 * to this process, as port I/O to a VMM's devices does. (Real mode needs
 * KVM_SET_TSS_ADDR only on Intel CPUs without unrestricted guest, none made
 * since 2010; on those KVM_RUN fails and so does the floor, loudly.)
 *
 * Exit status: 0 the guest ran to its hlt with every expected exit seen;
 * 1 a KVM call failed or the guest did something else (message on stderr);
 * 2 bad usage.
 *
 * Built by bench/floor/build.sh (gcc -static). The line above keeps Go's
 * tooling, which rejects C files in a directory without cgo, out of it.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MARKER_PORT 0x80
#define COM1_THR 0x3f8
#define CODE_GPA 0x1000

/* Real-mode code (16-bit operands). */
static const uint8_t boot_code[] = {
	0xb0, 0x40,		/* mov $0x40, %al   kernel-entry */
	0xe6, MARKER_PORT,	/* out %al, $0x80 */
	0xb0, 0x60,		/* mov $0x60, %al   pid1 */
	0xe6, MARKER_PORT,	/* out %al, $0x80 */
	0xba, 0xf8, 0x03,	/* mov $0x3f8, %dx */
	0xb0, 'v',		/* mov $'v', %al */
	0xee,			/* out %al, (%dx)   first-output */
	0xb0, 0x61,		/* mov $0x61, %al   ready */
	0xe6, MARKER_PORT,	/* out %al, $0x80 */
	0xb0, '\n',		/* mov $'\n', %al */
	0xee,			/* out %al, (%dx)   the answer */
	0xf4,			/* hlt */
};

static const uint8_t answer_code[] = {
	0xba, 0xf8, 0x03,	/* mov $0x3f8, %dx */
	0xb0, '\n',		/* mov $'\n', %al */
	0xee,			/* out %al, (%dx)   first-output and the answer */
	0xf4,			/* hlt */
};

/* The port writes each guest makes, in order; the helper checks them so
 * that a floor that did not run its guest is never reported as one. */
struct io { uint16_t port; uint8_t val; };
static const struct io boot_io[] = {
	{MARKER_PORT, 0x40}, {MARKER_PORT, 0x60}, {COM1_THR, 'v'}, {MARKER_PORT, 0x61}, {COM1_THR, '\n'},
};
static const struct io answer_io[] = {
	{COM1_THR, '\n'},
};

static void die(const char *what)
{
	fprintf(stderr, "floor-kvm: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: floor-kvm [boot|answer] [MEMORY_MIB]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const uint8_t *code = boot_code;
	size_t code_len = sizeof(boot_code);
	const struct io *want = boot_io;
	size_t nwant = sizeof(boot_io) / sizeof(boot_io[0]);
	unsigned long mib = 128;

	if (argc > 3)
		usage();
	if (argc > 1) {
		if (strcmp(argv[1], "answer") == 0) {
			code = answer_code;
			code_len = sizeof(answer_code);
			want = answer_io;
			nwant = sizeof(answer_io) / sizeof(answer_io[0]);
		} else if (strcmp(argv[1], "boot") != 0) {
			usage();
		}
	}
	if (argc > 2) {
		char *end;
		errno = 0;
		mib = strtoul(argv[2], &end, 10);
		/* At least the code page; at most 1 TiB of address space. */
		if (errno || *end || end == argv[2] || mib < 1 || mib > (1ul << 20))
			usage();
	}
	size_t mem_size = mib << 20;

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");

	/* Anonymous and lazily backed, as a VMM's guest RAM: only the code
	 * page is ever touched. */
	uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap guest memory");
	memcpy(mem + CODE_GPA, code, code_len);
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = mem_size,
		.userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	/* Out of reset the vCPU is in real mode at 0xffff:fff0; start it at
	 * the code page instead. */
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	struct kvm_regs regs = {.rip = CODE_GPA, .rflags = 0x2};
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	size_t seen = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t val = *((uint8_t *)run + run->io.data_offset);
			if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 1 || run->io.count != 1 || seen >= nwant ||
			    run->io.port != want[seen].port || val != want[seen].val) {
				fprintf(stderr, "floor-kvm: unexpected port I/O %s %#x = %#x (size %u, count %u) after %zu expected writes\n",
					run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in", run->io.port, val, run->io.size,
					run->io.count, seen);
				return 1;
			}
			seen++;
			break;
		}
		case KVM_EXIT_HLT:
			if (seen != nwant) {
				fprintf(stderr, "floor-kvm: guest halted after %zu of %zu port writes\n", seen, nwant);
				return 1;
			}
			return 0;
		default:
			fprintf(stderr, "floor-kvm: unexpected exit reason %u after %zu port writes\n", run->exit_reason, seen);
			return 1;
		}
	}
}
