/*
 * A bare-metal arm64 program for QEMU virt with the CPU cache model
 * (x-noncoherent=on): it maps RAM twice, cacheable at its own address and
 * Normal Non-cacheable 1 GiB above, then checks what each DC operation moves
 * between the CPU's copy and memory's. It prints "ok N" or "FAIL N" per check
 * on the PL011, then "done", and powers off through PSCI when it receives a
 * byte. Halfway, with a dirty line and a line only memory holds, it prints
 * "pause" and waits for a byte too, so that the host can snapshot that state.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
	.equ	UART, 0x09000000
	.equ	BUF, 0x40200000		/* cacheable */
	.equ	NC, 0x40000000		/* BUF + NC: the same memory, Non-cacheable */
	.equ	LINE, 64
	.equ	PAGE, 4096

	.text
	.global	_start
_start:
	ldr	x0, =stack_top
	mov	sp, x0
	/* MAIR: 0 Normal write-back, 1 Device-nGnRnE, 2 Normal Non-cacheable */
	ldr	x0, =0x4400ff
	msr	mair_el1, x0
	/* 4 GiB of VA, 4K granule, write-back walks, no TTBR1 walks, 36-bit PA */
	ldr	x0, =(32 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (1 << 32))
	msr	tcr_el1, x0
	ldr	x0, =ttb
	msr	ttbr0_el1, x0
	isb
	mrs	x0, sctlr_el1
	orr	x0, x0, #(1 << 0)	/* MMU */
	orr	x0, x0, #(1 << 2)	/* data cache */
	orr	x0, x0, #(1 << 12)	/* instruction cache */
	msr	sctlr_el1, x0
	isb

	ldr	x19, =BUF
	ldr	x20, =(BUF + NC)

	/* 1: a cacheable store stays in the CPU's copy */
	mov	x1, #0x11
	str	x1, [x19]
	ldr	x2, [x20]
	mov	x0, #1
	mov	x3, #0
	bl	check
	/* 2: DC CVAC writes the dirty line back */
	dc	cvac, x19
	dsb	sy
	ldr	x2, [x20]
	mov	x0, #2
	mov	x3, #0x11
	bl	check
	/* 3: a Non-cacheable store reaches memory, not the CPU's (stale) copy */
	mov	x1, #0x22
	str	x1, [x20, #LINE]
	ldr	x2, [x19, #LINE]
	mov	x0, #3
	mov	x3, #0
	bl	check
	/* 4: DC IVAC of a line the CPU did not write reloads it */
	add	x4, x19, #LINE
	dc	ivac, x4
	dsb	sy
	ldr	x2, [x19, #LINE]
	mov	x0, #4
	mov	x3, #0x22
	bl	check
	/*
	 * for 5 a dirty line, for 9 one only memory holds (the next page), for 11
	 * a line of the program's own image the CPU overwrote; then wait
	 */
	ldr	x5, =image_line
	mov	x1, #0x99
	str	x1, [x5]
	mov	x1, #0x33
	str	x1, [x19, #(2 * LINE)]
	mov	x1, #0x77
	str	x1, [x20, #(PAGE + LINE)]
	ldr	x1, =pause_msg
	bl	puts
	bl	getc
	/* 5: DC IVAC of a line the CPU wrote loses the write (CPU_WRITE_LOST) */
	add	x4, x19, #(2 * LINE)
	.global	lost_ivac
lost_ivac:
	dc	ivac, x4
	dsb	sy
	ldr	x2, [x19, #(2 * LINE)]
	mov	x0, #5
	mov	x3, #0
	bl	check
	/* 6, 7: DC CIVAC writes the CPU's dirty line over memory's, then reloads it */
	mov	x1, #0x44
	str	x1, [x19, #(3 * LINE)]
	mov	x1, #0x55
	str	x1, [x20, #(3 * LINE)]
	add	x4, x19, #(3 * LINE)
	dc	civac, x4
	dsb	sy
	ldr	x2, [x19, #(3 * LINE)]
	mov	x0, #6
	mov	x3, #0x44
	bl	check
	ldr	x2, [x20, #(3 * LINE)]
	mov	x0, #7
	mov	x3, #0x44
	bl	check
	/*
	 * 8: DC CVAC of a line the CPU did not write leaves memory alone. On a
	 * page nothing else here touches, and memory's bytes are read first:
	 * only a Non-cacheable store changes it, and a snapshot must undo that.
	 */
	ldr	x1, [x20, #(2 * PAGE)]
	add	x1, x1, #0x66
	str	x1, [x20, #(2 * PAGE)]
	add	x4, x19, #(2 * PAGE)
	dc	cvac, x4
	dsb	sy
	ldr	x2, [x20, #(2 * PAGE)]
	mov	x0, #8
	mov	x3, #0x66
	bl	check
	/* 9: DC IVAC of a line the CPU did not write, memory's bytes are not zero */
	add	x4, x19, #PAGE
	add	x4, x4, #LINE
	dc	ivac, x4
	dsb	sy
	ldr	x2, [x19, #(PAGE + LINE)]
	mov	x0, #9
	mov	x3, #0x77
	bl	check
	/*
	 * 10: DC ZVA leaves the zeroed line dirty even where the CPU's copy held
	 * zeros already, so a clean writes the zeros over memory's bytes.
	 */
	mov	x1, #0x88
	str	x1, [x20, #(3 * PAGE)]
	add	x4, x19, #(3 * PAGE)
	dc	zva, x4
	dc	cvac, x4
	dsb	sy
	ldr	x2, [x20, #(3 * PAGE)]
	mov	x0, #10
	mov	x3, #0
	bl	check
	/* 11: memory still holds the image as loaded under the CPU's dirty line */
	ldr	x5, =image_line
	ldr	x6, =NC
	ldr	x2, [x5, x6]
	mov	x0, #11
	mov	x3, #0x1234
	bl	check

	ldr	x1, =done_msg
	bl	puts
	bl	getc
	ldr	x0, =0x84000008		/* PSCI SYSTEM_OFF */
	hvc	#0
1:	wfi
	b	1b

/* check: x0 the check's number (1..19), x2 what was read, x3 what should be */
check:
	mov	x10, x30
	mov	x11, x0
	ldr	x1, =ok_msg
	cmp	x2, x3
	b.eq	2f
	ldr	x1, =fail_msg
2:	bl	puts
	cmp	w11, #10
	b.lo	6f
	mov	w0, #'1'
	bl	putc
	sub	w11, w11, #10
6:	add	w0, w11, #'0'
	bl	putc
	mov	w0, #'\n'
	bl	putc
	mov	x30, x10
	ret

/* puts: x1 a NUL-terminated string; putc: w0 a character */
puts:
	mov	x12, x30
3:	ldrb	w0, [x1], #1
	cbz	w0, 4f
	bl	putc
	b	3b
4:	mov	x30, x12
	ret
putc:
	ldr	x9, =UART
	strb	w0, [x9]
	ret
/* getc: waits for a received byte (FR.RXFE clear), returns it in w0 */
getc:
	ldr	x9, =UART
5:	ldr	w0, [x9, #0x18]
	tbnz	w0, #4, 5b
	ldr	w0, [x9]
	ret

	.section .rodata
ok_msg:		.asciz	"ok "
fail_msg:	.asciz	"FAIL "
pause_msg:	.asciz	"pause\n"
done_msg:	.asciz	"done\n"

	.data
	.balign	64
image_line:
	.quad	0x1234
	.space	56
	.balign	4096
/* Level 1, 1 GiB blocks: devices, RAM cacheable, RAM again Non-cacheable */
ttb:
	.quad	0x00000000 | (1 << 10) | (1 << 2) | 1
	.quad	0x40000000 | (1 << 10) | (3 << 8) | 1
	.quad	0x40000000 | (1 << 10) | (2 << 2) | 1
	.quad	0
	.balign	16
	.space	4096
stack_top:
