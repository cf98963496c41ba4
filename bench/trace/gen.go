package trace

// The generated stages_bpfel.go and stages_bpfel.o are committed so that
// building needs no clang. Regenerating needs clang, llvm and libbpf-dev
// (Debian), and the multiarch include path for <asm/types.h>.
//go:generate go tool bpf2go -tags linux -target bpfel -type proc -type milestone stages stages.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror -mcpu=v3
