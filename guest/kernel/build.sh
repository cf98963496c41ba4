#!/usr/bin/env bash
# Build Volt's guest kernel reproducibly from Debian's linux-source-6.1.
#
#   guest/kernel/build.sh OUTDIR      -> OUTDIR/vmlinux (ELF, PVH note) and OUTDIR/bzImage
#
# Inputs: /usr/src/linux-source-6.1.tar.xz (package linux-source-6.1),
#         guest/kernel/volt.config (fragment merged onto tinyconfig),
#         guest/kernel/patches/*.patch (applied in name order with patch -p1),
#         this script.
# The build lives in ${VOLT_CACHE:-$HOME/.cache/volt}/kernel/<key>, key = sha256 over
# all inputs. A second run with the same inputs only copies the cached images.
#
# Environment: VOLT_CACHE (cache root), VOLT_KERNEL_TARBALL (override the tarball path,
# for tests), JOBS (default: nproc), VOLT_KERNEL_KEEP (completed cache entries to keep,
# newest first, default 2; each holds a full kernel tree of ~1.6 GB).
set -euo pipefail

die() { echo "build.sh: error: $*" >&2; exit 1; }
step() { echo "build.sh: [$(date +%H:%M:%S)] $*"; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUTDIR=$1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$HERE/volt.config"
PATCHDIR="$HERE/patches"
TARBALL=${VOLT_KERNEL_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
CACHE_ROOT=${VOLT_CACHE:-$HOME/.cache/volt}/kernel
JOBS=${JOBS:-$(nproc)}

# Fixed build identity so that two builds of the same inputs produce the same banner.
export KBUILD_BUILD_TIMESTAMP="2024-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=volt
export KBUILD_BUILD_HOST=volt
export KBUILD_BUILD_VERSION=1
export LC_ALL=C TZ=UTC

# ---- 1. inputs -------------------------------------------------------------------------
step "checking inputs"
if [ ! -r "$TARBALL" ]; then
	die "kernel source $TARBALL not found.
  Install it with:  apt-get install linux-source-6.1 flex bison bc libelf-dev libssl-dev
  (or point VOLT_KERNEL_TARBALL at a linux-source-6.1 tarball)"
fi
[ -r "$FRAGMENT" ] || die "missing config fragment $FRAGMENT"
for tool in make gcc flex bison bc sha256sum tar xz lz4 patch readelf flock; do
	command -v "$tool" >/dev/null || die "missing tool '$tool' (apt-get install build-essential flex bison bc libelf-dev libssl-dev xz-utils lz4 patch binutils)"
done

# Source identity: the Debian package version when the tarball is the packaged one,
# otherwise the tarball's own sha256.
SRC_ID=""
if [ -z "${VOLT_KERNEL_TARBALL:-}" ]; then
	SRC_ID=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)
	[ -n "$SRC_ID" ] && SRC_ID="linux-source-6.1=$SRC_ID"
fi
if [ -z "$SRC_ID" ]; then
	step "hashing $TARBALL (not a packaged tarball)"
	SRC_ID="tarball-sha256=$(sha256sum "$TARBALL" | cut -d' ' -f1)"
fi

shopt -s nullglob
PATCHES=("$PATCHDIR"/*.patch)
shopt -u nullglob

KEY=$({
	echo "src $SRC_ID"
	echo "fragment $(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
	for p in "${PATCHES[@]}"; do echo "patch $(basename "$p") $(sha256sum <"$p" | cut -d' ' -f1)"; done
	echo "script $(sha256sum <"$SELF" | cut -d' ' -f1)"
} | sha256sum | cut -c1-16)
WORK="$CACHE_ROOT/$KEY"
TREE="$WORK/linux"
LOG="$WORK/build.log"
step "cache key $KEY ($SRC_ID, ${#PATCHES[@]} patch(es)) -> $WORK"

install_outputs() {
	mkdir -p "$OUTDIR"
	cp -f "$WORK/vmlinux" "$OUTDIR/vmlinux.tmp" && mv -f "$OUTDIR/vmlinux.tmp" "$OUTDIR/vmlinux"
	cp -f "$WORK/bzImage" "$OUTDIR/bzImage.tmp" && mv -f "$OUTDIR/bzImage.tmp" "$OUTDIR/bzImage"
	cp -f "$WORK/config" "$OUTDIR/kernel.config"
	step "installed $OUTDIR/vmlinux ($(stat -c %s "$OUTDIR/vmlinux") bytes), $OUTDIR/bzImage ($(stat -c %s "$OUTDIR/bzImage") bytes), $OUTDIR/kernel.config"
}

if [ -f "$WORK/done" ] && [ -f "$WORK/vmlinux" ] && [ -f "$WORK/bzImage" ]; then
	step "cached build found, copying"
	install_outputs
	exit 0
fi

mkdir -p "$WORK"
exec 9>"$WORK/lock"
flock -n 9 || { step "another build holds $WORK/lock, waiting"; flock 9; }
: >"$LOG"

on_fail() {
	echo "build.sh: FAILED; last lines of $LOG:" >&2
	tail -n 40 "$LOG" >&2 || true
}
trap on_fail ERR

# ---- 2. source tree ----------------------------------------------------------------------
if [ ! -f "$WORK/extracted" ]; then
	step "extracting $TARBALL"
	rm -rf "$TREE" "$WORK/tmp"
	mkdir -p "$WORK/tmp"
	tar -C "$WORK/tmp" -xf "$TARBALL" >>"$LOG" 2>&1
	src=("$WORK"/tmp/*)
	[ ${#src[@]} -eq 1 ] && [ -f "${src[0]}/Makefile" ] || die "unexpected tarball layout in $TARBALL"
	mv "${src[0]}" "$TREE"
	rmdir "$WORK/tmp"
	for p in "${PATCHES[@]}"; do
		step "applying $(basename "$p")"
		patch -d "$TREE" -p1 --forward --batch <"$p" >>"$LOG" 2>&1 || die "patch $(basename "$p") does not apply (see $LOG)"
	done
	touch "$WORK/extracted"
fi

# ---- 3. configuration --------------------------------------------------------------------
step "configuring: tinyconfig + volt.config"
{
	make -C "$TREE" tinyconfig
	( cd "$TREE" && ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" )
	make -C "$TREE" olddefconfig
} >>"$LOG" 2>&1

# Every option the fragment asks for must survive olddefconfig (a silently dropped
# option usually means a missing dependency in the fragment).
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=n) opt=${line%%=*}
		grep -qx "$opt=[ym].*" "$TREE/.config" && { echo "build.sh: $opt is set, fragment wants n" >&2; bad=1; } ;;
	CONFIG_*=*)
		grep -qxF "$line" "$TREE/.config" || { echo "build.sh: fragment line '$line' not in final .config ($(grep -E "^(# )?${line%%=*}[= ]" "$TREE/.config" || echo absent))" >&2; bad=1; } ;;
	esac
done < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$FRAGMENT" | grep -v '^$' || true)
[ $bad -eq 0 ] || die "config fragment not fully applied (see above)"
cp "$TREE/.config" "$WORK/config"

# ---- 4. build ----------------------------------------------------------------------------
step "building vmlinux and bzImage with make -j$JOBS (log: $LOG)"
start=$(date +%s)
make -C "$TREE" -j"$JOBS" vmlinux bzImage >>"$LOG" 2>&1
step "build finished in $(( $(date +%s) - start )) s"

# ---- 5. checks and install ---------------------------------------------------------------
step "checking vmlinux for the PVH (Xen ELF note type 18) entry"
readelf -n "$TREE/vmlinux" | grep -q 'Xen.*0x00000012\|XEN_ELFNOTE_PHYS32_ENTRY' \
	|| die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH=y?"
cp -f "$TREE/vmlinux" "$WORK/vmlinux"
cp -f "$TREE/arch/x86/boot/bzImage" "$WORK/bzImage"
touch "$WORK/done"
trap - ERR
install_outputs

# ---- 6. prune older completed cache entries (never this one, never unfinished ones) -------
keep=${VOLT_KERNEL_KEEP:-2}
ls -1dt "$CACHE_ROOT"/*/done 2>/dev/null | tail -n +$((keep + 1)) | while read -r d; do
	old=$(dirname "$d")
	[ "$old" = "$WORK" ] && continue
	step "pruning old cache entry $old"
	rm -rf "$old"
done
