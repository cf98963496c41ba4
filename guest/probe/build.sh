#!/bin/sh
# Builds the probe guest: guest/probe/build.sh OUTDIR writes OUTDIR/probe.elf.
# Deterministic for a given toolchain: no build IDs, no debug info, sources
# named relative to this directory.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
out=$1
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

CC=${CC:-gcc}
LD=${LD:-ld}
# No SSE/x87 registers (ring 0 never saves them), no red zone, no PIC
# (the image runs at a fixed address); min-pagesize=0 because the BIOS data
# area at 0x40e is real memory here, not a null-pointer dereference.
CFLAGS="-Os -std=c11 -ffreestanding -fno-builtin -nostdinc -isystem $($CC -print-file-name=include)
	-fno-pic -fno-pie -mcmodel=small -mno-red-zone -mgeneral-regs-only
	--param=min-pagesize=0 -fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
	-fcf-protection=none -fno-ident -Wall -Wextra -Werror"

# The C and assembly sources live in src/ because the Go toolchain refuses
# .c and .S files in a package directory that does not use cgo.
cd "$src/src"
$CC $CFLAGS -I.. -c boot.S -o "$tmp/boot.o"
for c in probe virtio vsock; do
	$CC $CFLAGS -I.. -c $c.c -o "$tmp/$c.o"
done
$LD -nostdlib -static -no-pie --build-id=none -s -z max-page-size=4096 \
	-z noexecstack --no-warn-rwx-segments \
	-T probe.ld -o "$tmp/probe.elf" "$tmp/boot.o" "$tmp/probe.o" "$tmp/virtio.o" "$tmp/vsock.o"
mv "$tmp/probe.elf" "$out/probe.elf"
echo "probe: $out/probe.elf ($(wc -c <"$out/probe.elf") bytes)"
