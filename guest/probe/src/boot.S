/*
 * Ring-0 part of the probe: PVH entry, long mode, descriptor tables and the
 * handful of interrupt handlers ring 3 cannot do without.
 *
 * On the development machines KVM emulates every ring-0 instruction (~1 us
 * each) while ring-3 code runs natively, so everything here is either a
 * static table the loader copies in for free or one of ~35 instructions
 * executed once on the way to ring 3. Ring 3 runs with RFLAGS.IOPL=3, so it
 * keeps port I/O, and every page is user-accessible, so it keeps MMIO.
 */
#include "marker.h"

/*
 * The linker script pins .boot at 1 MiB. Knowing the address while
 * assembling lets the descriptors below, which scatter address bits over
 * several fields, be plain constants instead of code that patches them.
 */
#define BOOT_BASE	0x100000
#define ABS(sym)	(BOOT_BASE + ((sym) - boot_start))

#define SEL_KCODE	0x08
#define SEL_KDATA	0x10
#define SEL_UCODE	0x18
#define SEL_UDATA	0x20
#define SEL_TSS		0x28

#define CR0_PE		(1 << 0)
#define CR0_MP		(1 << 1)
#define CR0_ET		(1 << 4)
#define CR0_NE		(1 << 5)
#define CR0_PG		(1 << 31)
#define CR4_PAE		(1 << 5)
#define CR4_OSFXSR	(1 << 9)
#define CR4_OSXMMEXCPT	(1 << 10)
#define MSR_EFER	0xc0000080
#define EFER_LME	(1 << 8)

/* Bit 1 is reserved-one; IF stays clear so ring 3 is only interrupted
 * inside the wait gate, where it asked to be. */
#define RFLAGS_USER	((3 << 12) | (1 << 1))

#define GATE_INTR	0x8e	/* present, DPL 0, 64-bit interrupt gate */
#define GATE_USER	0xee	/* the same, callable from ring 3 with int */

#define VEC_PIC1	0x20	/* PIC master remapped to 0x20-0x27 by ring 3 */
#define VEC_PIC2	0x28	/* and the slave to 0x28-0x2f */
#define VEC_APIC_SPUR	0x3f	/* LAPIC spurious vector chosen by ring 3 */
#define VEC_WAIT	0x80
#define VEC_RESET	0x81
#define NVEC		(VEC_RESET + 1)

#define COM1		0x3f8

	.section .boot, "awx"
	.code32
	.globl	pvh_entry
boot_start:
pvh_entry:
	movb	$MARKER_KERNEL_ENTRY, %al
	outb	%al, $MARKER_PORT
	lgdt	gdt_ptr
	movl	$(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	movl	$EFER_LME, %eax
	xorl	%edx, %edx
	wrmsr
	movl	$(CR0_PG | CR0_NE | CR0_ET | CR0_MP | CR0_PE), %eax
	movl	%eax, %cr0
	ljmp	$SEL_KCODE, $long_mode

	.code64
long_mode:
	movb	$MARKER_KERNEL_LONG_MODE, %al
	outb	%al, $MARKER_PORT
	movl	$SEL_KDATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movq	$kstack_top, %rsp
	movw	$SEL_TSS, %ax
	ltr	%ax
	lidt	idt_ptr(%rip)
	pushq	$(SEL_UDATA | 3)
	pushq	$ustack_top
	pushq	$RFLAGS_USER
	pushq	$(SEL_UCODE | 3)
	pushq	$user_entry
	/* EBX holds the hvm_start_info address; hand it to ring 3 as its
	 * first argument rather than spending ring-0 instructions on it. */
	movl	%ebx, %edi
	iretq

/*
 * int $0x80 from ring 3: sleep until an interrupt arrives. Ring 3 runs with
 * IF=0, so a UART interrupt raised since it last looked at the LSR is still
 * pending and ends the hlt at once; sti's one-instruction shadow keeps it
 * from being taken before the hlt.
 */
isr_wait:
	btrl	$0, irq_seen(%rip)
	jc	1f
	sti
	hlt
	cli
	movl	$0, irq_seen(%rip)
1:	iretq

/*
 * On the development machines ring 3's int $0x80 never reaches the gate:
 * the host raises #UD at the int instead (KVM's emulator cannot emulate a
 * protected-mode software interrupt). Recognise int $0x80 and int $0x81 at
 * the faulting RIP and serve them here, so one guest works on both kinds
 * of host. Ring 0 may read ring-3 code: SMAP is off.
 */
isr_ud:
	pushq	%rax
	movq	8(%rsp), %rax		/* faulting RIP */
	cmpw	$0x80cd, (%rax)
	je	1f
	cmpw	$0x81cd, (%rax)
	je	isr_reset
	popq	%rax
	pushq	$6
	jmp	exc_common
1:	addq	$2, 8(%rsp)		/* resume after the int */
	popq	%rax
	jmp	isr_wait

/*
 * PIC interrupts: the UART's (IRQ 4) and a virtio device's, which ring 3
 * unmasks when it wants to sleep on one. Every vector of a PIC gets the
 * same handler: a non-specific EOI (to both PICs for the slave's lines)
 * and irq_seen; ring 3 then looks at all of its devices. The master's
 * spurious IRQ 7 is acknowledged too: with nothing in service the EOI
 * does nothing. Few instructions, because each is emulated.
 *
 * irq_seen covers a host that runs ring 3 with interrupts on anyway: an
 * interrupt taken between ring 3's LSR read and its int $0x80 must not
 * leave the wait gate sleeping on data that has already arrived.
 */
isr_pic1:
	pushq	%rax
	movb	$0x20, %al		/* non-specific EOI to the master PIC */
	outb	%al, $0x20
	movl	$1, irq_seen(%rip)
	popq	%rax
	iretq

isr_pic2:
	pushq	%rax
	movb	$0x20, %al		/* non-specific EOI, slave then master */
	outb	%al, $0xa0
	outb	%al, $0x20
	movl	$1, irq_seen(%rip)
	popq	%rax
	iretq

/* Spurious LAPIC interrupts must not be acknowledged. */
isr_spurious:
	iretq

/*
 * int $0x81 from ring 3: the last power-off resort. With no IDT, the #GP
 * from loading a selector past the GDT limit escalates to a triple fault,
 * which every VMM turns into a shutdown or reset (QEMU exits on it with
 * -no-reboot). Not int3: KVM's instruction emulator, which runs all ring-0
 * code on the development machines, cannot emulate it.
 */
isr_reset:
	lidt	null_idt(%rip)
	movl	$0xfff8, %eax
	movl	%eax, %ds
	hlt
	jmp	isr_reset

/*
 * CPU exceptions: report and stop. This path runs emulated in ring 0 and
 * costs milliseconds, which is fine because it only runs when the probe is
 * broken. Each stub is 8 bytes so the IDT can compute its address.
 */
	.balign	8
exc_stubs:
	.set	vec, 0
	.rept	32
	.balign	8
	pushq	$vec
	.byte	0xe9			/* jmp rel32, kept 5 bytes long */
	.long	exc_common - . - 4
	.set	vec, vec + 1
	.endr

exc_common:
	popq	%rbx			/* vector */
	/* Vectors 8, 10-14, 17, 21, 29 and 30 push an error code; drop it
	 * so the faulting RIP is on top. */
	movl	$0x60227d00, %eax
	btl	%ebx, %eax
	jnc	1f
	popq	%rax
1:	leaq	msg_panic(%rip), %rsi
	call	k_puts
	movq	%rbx, %rax
	call	k_puthex
	leaq	msg_rip(%rip), %rsi
	call	k_puts
	movq	(%rsp), %rax
	call	k_puthex
	leaq	msg_rflags(%rip), %rsi
	call	k_puts
	movq	16(%rsp), %rax
	call	k_puthex
	leaq	msg_cr2(%rip), %rsi
	call	k_puts
	movq	%cr2, %rax
	call	k_puthex
	movb	$'\n', %al
	movw	$COM1, %dx
	outb	%al, %dx
	jmp	isr_reset

/* Ring-0 serial output for the panic path only: no LSR polling, which
 * every emulated 8250 tolerates. */
k_puts:
	movw	$COM1, %dx
2:	lodsb
	testb	%al, %al
	jz	3f
	outb	%al, %dx
	jmp	2b
3:	ret

k_puthex:
	movq	%rax, %rdi
	movl	$16, %ecx
	movw	$COM1, %dx
4:	rolq	$4, %rdi
	movl	%edi, %eax
	andl	$0xf, %eax
	leaq	hexdigits(%rip), %rsi
	movb	(%rsi,%rax), %al
	outb	%al, %dx
	decl	%ecx
	jnz	4b
	ret

msg_panic:	.asciz	"\nvolt-probe: panic: exception 0x"
msg_rip:	.asciz	" rip=0x"
msg_rflags:	.asciz	" rflags=0x"
msg_cr2:	.asciz	" cr2=0x"
hexdigits:	.ascii	"0123456789abcdef"

/*
 * GDT: 64-bit kernel code/data, 64-bit user code/data, then the TSS, whose
 * only job is to give ring 3's interrupts and int $0x80 a ring-0 stack.
 */
	.balign	16
gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08 kernel code, L=1 */
	.quad	0x00cf92000000ffff	/* 0x10 kernel data */
	.quad	0x00affa000000ffff	/* 0x18 user code, L=1, DPL 3 */
	.quad	0x00cff2000000ffff	/* 0x20 user data, DPL 3 */
	.word	tss_end - tss - 1	/* 0x28 available 64-bit TSS */
	.word	ABS(tss) & 0xffff
	.byte	(ABS(tss) >> 16) & 0xff
	.byte	0x89
	.byte	0
	.byte	(ABS(tss) >> 24) & 0xff
	.long	0
	.long	0
gdt_end:

	.balign	8
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt
idt_ptr:
	.word	NVEC * 16 - 1
	.quad	idt
null_idt:
	.word	0
	.quad	0

	.balign	16
tss:
	.long	0
	.quad	kstack_top		/* rsp0 */
	.quad	0, 0			/* rsp1, rsp2 */
	.quad	0
	.quad	0, 0, 0, 0, 0, 0, 0	/* ist1-7 */
	.quad	0
	.word	0
	.word	tss_iomap - tss
/*
 * An all-zero I/O permission bitmap grants every port, as IOPL=3 already
 * does on real hardware. It is here for KVM's instruction emulator, which
 * runs ring 0 on the development machines: there ring 3 loses IOPL, each
 * in/out faults into the emulator, and the emulator consults this bitmap.
 */
tss_iomap:
	.skip	8192
	.byte	0xff			/* the bitmap must end with an all-ones byte */
tss_end:

#define GATE(target, type)				\
	.word	ABS(target) & 0xffff;			\
	.word	SEL_KCODE;				\
	.byte	0;					\
	.byte	type;					\
	.word	(ABS(target) >> 16) & 0xffff;		\
	.long	0;					\
	.long	0

	.balign	16
idt:
	.set	vec, 0
	.rept	32
	.if	vec == 6
	GATE(isr_ud, GATE_INTR)
	.else
	GATE(exc_stubs + vec * 8, GATE_INTR)
	.endif
	.set	vec, vec + 1
	.endr
	.if	VEC_PIC1 != 32 || VEC_PIC2 != VEC_PIC1 + 8
	.error	"the PIC vectors must follow the 32 exception vectors"
	.endif
	.rept	8
	GATE(isr_pic1, GATE_INTR)
	.endr
	.rept	8
	GATE(isr_pic2, GATE_INTR)
	.endr
	.skip	(VEC_APIC_SPUR - VEC_PIC2 - 8) * 16
	GATE(isr_spurious, GATE_INTR)
	.skip	(VEC_WAIT - VEC_APIC_SPUR - 1) * 16
	GATE(isr_wait, GATE_USER)
	GATE(isr_reset, GATE_USER)
idt_end:
	.if	idt_end - idt != NVEC * 16
	.error	"IDT layout does not match NVEC"
	.endif

/*
 * Identity map of the first 4 GiB with 2 MiB pages, all user-accessible so
 * ring 3 reaches RAM, firmware tables and MMIO (LAPIC, ACPI GED at
 * 0xfexxxxxx). Built by the assembler: filling 2048 entries at run time
 * would cost ~8 ms of emulated ring-0 instructions.
 */
#define PTE_P	(1 << 0)
#define PTE_W	(1 << 1)
#define PTE_U	(1 << 2)
#define PTE_PS	(1 << 7)

	.balign	4096
pml4:
	.quad	pdpt + (PTE_P | PTE_W | PTE_U)
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0000 + (PTE_P | PTE_W | PTE_U)
	.quad	pd + 0x1000 + (PTE_P | PTE_W | PTE_U)
	.quad	pd + 0x2000 + (PTE_P | PTE_W | PTE_U)
	.quad	pd + 0x3000 + (PTE_P | PTE_W | PTE_U)
	.fill	508, 8, 0
pd:
	.set	addr, 0
	.rept	2048
	.quad	addr | (PTE_P | PTE_W | PTE_U | PTE_PS)
	.set	addr, addr + 0x200000
	.endr

/*
 * Ring 3 starts here with RDI = hvm_start_info address. The loader may
 * not have zeroed .bss (nothing in PVH says it must), so clear it here,
 * natively, before any C runs.
 */
	.text
	.globl	user_entry
user_entry:
	movq	%rdi, %rbx
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	xorl	%eax, %eax
	rep stosb
	movq	%rbx, %rdi
	call	probe_main
	ud2

	.section .boot, "awx"
	.balign	4
irq_seen:
	.long	0

	.section .stack, "aw", @nobits
	.balign	16
	.space	4096
kstack_top:
	.space	16384
ustack_top:

/*
 * Xen PVH entry note. The descriptor is 8 bytes, as in Linux: QEMU 7.2
 * reads a size_t from it for ELF64 kernels, so a 4-byte descriptor would
 * pick up whatever follows.
 */
	.section .note.xen, "a", @note
	.balign	4
	.long	4			/* namesz: "Xen\0" */
	.long	8			/* descsz */
	.long	18			/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.quad	pvh_entry
