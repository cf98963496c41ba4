#!/usr/bin/env bash
# Builds volt-init and the guest root file systems into OUTDIR:
#   OUTDIR/volt-init            static PID 1
#   OUTDIR/initramfs.cpio       /init + busybox, for boots without a disk; left
#                               uncompressed: unpacking is then a copy, where
#                               gunzip costs milliseconds on hardware-assisted
#                               KVM and over a minute where ring 0 is emulated
#   OUTDIR/rootfs.ext4          the same tree as a disk image (label volt-root)
# Usage: guest/init/build.sh OUTDIR   (BUSYBOX=/path overrides /bin/busybox)
set -euo pipefail

if [[ $# -ne 1 ]]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
out=$1
busybox=${BUSYBOX:-/bin/busybox}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

if [[ ! -x $busybox ]]; then
	echo "build.sh: no busybox at $busybox: apt-get install busybox-static" >&2
	exit 1
fi
if ! command -v mkfs.ext4 >/dev/null && [[ ! -x /usr/sbin/mkfs.ext4 && ! -x /sbin/mkfs.ext4 ]]; then
	echo "build.sh: mkfs.ext4 not found: apt-get install e2fsprogs" >&2
	exit 1
fi
mkdir -p "$out"
rm -f "$out/initramfs.cpio.gz" # built by earlier versions of this script

echo "build.sh: [1/3] volt-init -> $out/volt-init"
CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$out/volt-init" ./guest/init/cmd/volt-init

echo "build.sh: [2/3] volt-rootfs tool"
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
go build -o "$tool/volt-rootfs" ./cmd/volt-rootfs

echo "build.sh: [3/3] initramfs and ext4 image (busybox $busybox)"
"$tool/volt-rootfs" --init "$out/volt-init" --busybox "$busybox" \
	--initramfs "$out/initramfs.cpio" --ext4 "$out/rootfs.ext4"
echo "build.sh: done: $(du -h "$out/volt-init" "$out/initramfs.cpio" "$out/rootfs.ext4" | awk '{printf "%s %s  ", $2, $1}')"
