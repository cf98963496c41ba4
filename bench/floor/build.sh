#!/usr/bin/env bash
# Builds voltbench's floor helpers into OUTDIR (scripts/setup: build/floor):
#   floor-exec-go   an empty static Go binary (built like volt-vmm)
#   floor-exec-c    an empty static C binary
#   floor-kvm       the minimal KVM set-up and a guest of a few instructions
# Needs go and gcc with a static libc (Debian: gcc, libc6-dev). Prints one
# line per binary. See bench/README.md, "The floor".
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

cflags=(-static -O2 -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE)
# Each binary is written under a temporary name and renamed, so a failed
# or interrupted build never leaves a half-written helper that voltbench
# would time.
build_c() {
	gcc "${cflags[@]}" -o "$out/.$1.tmp" "$here/$2"
	mv -f "$out/.$1.tmp" "$out/$1"
	echo "floor: $out/$1"
}
build_c floor-exec-c empty.c
build_c floor-kvm kvm.c
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$out/.floor-exec-go.tmp" ./bench/floor/emptygo)
mv -f "$out/.floor-exec-go.tmp" "$out/floor-exec-go"
echo "floor: $out/floor-exec-go"
