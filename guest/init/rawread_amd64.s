#include "textflag.h"

// func rawRead8(fd int, p *uint64) (n int, errno syscall.Errno)
TEXT ·rawRead8(SB), NOSPLIT, $0-32
	MOVQ fd+0(FP), DI
	MOVQ p+8(FP), SI
	MOVQ $8, DX
	MOVQ $0, AX // SYS_read
	SYSCALL
	CMPQ AX, $0xfffffffffffff001
	JLS  ok
	MOVQ $-1, n+16(FP)
	NEGQ AX
	MOVQ AX, errno+24(FP)
	RET
ok:
	MOVQ AX, n+16(FP)
	MOVQ $0, errno+24(FP)
	RET
