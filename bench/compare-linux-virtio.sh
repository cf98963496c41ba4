#!/usr/bin/env bash
# compare-linux-virtio.sh: our Linux guest's virtio-blk and virtio-net devices
# under volt-vmm and under QEMU microvm, side by side in one session.
#
# Both VMMs boot the same kernel (build/guest/vmlinux, PVH entry), the same
# initramfs (build/guest/initramfs.cpio with a small bench overlay appended:
# two busybox scripts), the same memory and vCPU count and the same disk image
# (a copy of build/guest/rootfs.ext4, attached read-only as the only disk,
# /dev/vda), each with one virtio-mmio disk and one virtio-net interface on a
# TAP in its own network namespace (same addresses in both: host 10.0.0.1,
# guest 10.0.0.2). Each VM boots once; then, for ROUNDS rounds, alternating
# which VMM goes first (ABBA), the host asks each guest in turn to:
#   dd-1M  read the whole disk with O_DIRECT, bs=1M (sequential throughput);
#   dd-4K  read DD4K_COUNT blocks of 4 KiB with O_DIRECT (one request in
#          flight: per-request latency);
#   dd-0   the same dd with count=0 (what the timing brackets cost: the
#          fork/exec of dd and of the clock reads, no I/O);
# each timed inside the guest (busybox adjtimex before and after, µs); then
# RR_N TCP request/response round trips of a 64-byte line over one connection
# to a busybox cat in the guest, timed on the host; then PINGS ICMP echoes
# from the host (answered by the guest kernel alone).
#
# The guest side is a busybox nc server (nc -ll -p 7000 -e handler): one
# connection per request, the first line names it, the answer comes back on
# the same connection. Nothing of the guest's work runs on the host, and the
# guest's timings never include the host's.
#
# Usage (root: netns, TAPs):
#   bench/compare-linux-virtio.sh
#   ROUNDS=8 RR_N=100 PINGS=10 DD4K_COUNT=512 RAW=out.tsv bench/compare-linux-virtio.sh
# Environment: VOLT_VMM, QEMU, KERNEL, INITRD, DISK (artefacts), MEMORY (256M),
# CPUS (1), ROUNDS (8), RR_N (100), PINGS (10 per round), DD4K_COUNT (512),
# BOOT_TIMEOUT (900 s per boot), RAW (a file to keep the raw samples in, TSV),
# LOGDIR (a directory to keep the consoles, VMM stderr and guest CPU flags in),
# EVENTS=1 (count KVM events per measurement with perf stat; see with_cpu),
# QEMU_NET_OPTS (",prop=value..." added to QEMU's virtio-net-device).
#
# The host here is nested, software-assisted KVM (kvm_pvm): the guest kernel
# runs in KVM's instruction emulator, so volt-vmm gets --guest-profile
# nested-pvm and QEMU the same kernel options on -append and the same CPUID
# features hidden with -cpu (guest/profile/profile.go; guest/README.md (d)).
# QEMU also gets an i8042, the reset line through which reboot=k ends the
# guest (volt-vmm has one), so that both VMMs exit when the guest is done.
# The script checks that both kernels printed the same command line apart from
# the virtio_mmio.device= entries each VMM adds, and shows any difference in
# the CPU flags, KVM lines and negotiated virtio features the guests report.
#
# Cleans up (trap on EXIT): the VMM processes it started, its two network
# namespaces (and the TAPs in them), its temporary directory. Ctrl-C stops it
# at once; a TERM sent to the script alone takes effect (bash defers traps)
# when the request in flight ends.
set -euo pipefail
export LC_ALL=C

GUEST_IP=10.0.0.2
HOST_IP=10.0.0.1
PORT=7000
GUEST_MAC=02:00:00:00:00:0b

# --- host-side helpers, run inside a namespace (ip netns exec ... "$0" __ask)

# connect opens fd 3 to the guest's bench server, retrying while it starts.
connect() {
	local i
	for i in $(seq 1 30); do
		if exec 3<>"/dev/tcp/$GUEST_IP/$PORT"; then
			return 0
		fi 2>/dev/null
		sleep 1
	done
	echo "connect $GUEST_IP:$PORT: no answer after 30 tries" >&2
	return 1
}

# __ask sends one request line and prints the whole answer (to EOF).
ask_main() {
	connect
	printf '%s\n' "$1" >&3
	timeout "${2:-600}" cat <&3
}

# __rr: one connection, "echo", then N round trips of a 64-byte line, each
# timed with bash's $EPOCHREALTIME (µs); prints one duration per line.
rr_main() {
	local n=$1 line t0 t1 i
	local msg
	msg=$(printf 'r%.0s' $(seq 1 63))
	connect
	printf 'echo\n' >&3
	IFS= read -r -t 60 line <&3 || { echo "rr: no answer to echo" >&2; return 1; }
	[[ $line == ok ]] || { echo "rr: echo answered [$line]" >&2; return 1; }
	# The first line meets the guest's exec of cat: not timed.
	printf '%s\n' "$msg" >&3
	IFS= read -r -t 60 line <&3 || { echo "rr: no echo of the warm-up line" >&2; return 1; }
	for ((i = 0; i < n; i++)); do
		t0=${EPOCHREALTIME/./}
		printf '%s\n' "$msg" >&3
		IFS= read -r -t 30 line <&3 || { echo "rr: round trip $i: no echo in 30 s" >&2; return 1; }
		t1=${EPOCHREALTIME/./}
		[[ $line == "$msg" ]] || { echo "rr: round trip $i: echo [$line]" >&2; return 1; }
		echo $((t1 - t0))
	done
	exec 3>&-
}

case "${1:-}" in
__ask) shift; ask_main "$@"; exit ;;
__rr) shift; rr_main "$@"; exit ;;
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
"") ;;
*) echo "usage: $0 (no arguments; see --help)" >&2; exit 2 ;;
esac

# --- configuration

REPO=$(cd "$(dirname "$0")/.." && pwd)
VOLT_VMM=${VOLT_VMM:-$REPO/bin/volt-vmm}
QEMU=${QEMU:-qemu-system-x86_64}
KERNEL=${KERNEL:-$REPO/build/guest/vmlinux}
INITRD=${INITRD:-$REPO/build/guest/initramfs.cpio}
DISK=${DISK:-$REPO/build/guest/rootfs.ext4}
MEMORY=${MEMORY:-256M}
CPUS=${CPUS:-1}
ROUNDS=${ROUNDS:-8}
RR_N=${RR_N:-100}
PINGS=${PINGS:-10}
DD4K_COUNT=${DD4K_COUNT:-512}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
RAW=${RAW:-}
LOGDIR=${LOGDIR:-}
EVENTS=${EVENTS:-0}
# Extra virtio-net-device properties for QEMU, e.g. ",mrg_rxbuf=off": volt-vmm
# does not offer VIRTIO_NET_F_MRG_RXBUF yet (vmm/virtio/net: the queue cannot
# publish a frame's used entries at once), QEMU does by default, and without
# it a Linux guest that negotiated guest TSO posts "big" receive buffers (a
# chain of pages per buffer) instead of mergeable ones.
QEMU_NET_OPTS=${QEMU_NET_OPTS:-}

# The nested-pvm profile's kernel options and CPUID mask
# (guest/profile/profile.go), spelt out for QEMU; volt-vmm adds them itself.
PROFILE_OPTS="noxsave clearcpuid=smap,smep,pku,popcnt,cx16,rdrand,rdseed,rdtscp,114 nofsgsbase no_int3_selftest tsc=reliable no_timer_check idle=halt volt_syscall_from_pf volt_no_fwait_on_drop volt.genid_interval=1s"
# migratable=off,+invtsc: volt-vmm's default "host" template passes what KVM
# supports, invariant TSC included, and with it (and tsc=reliable) the guest
# switches from kvm-clock to the TSC; QEMU's host model leaves invtsc out
# unless asked, and its guest then stays on kvm-clock, a different (and
# here, emulated, dearer) clock read in every timestamp the kernel takes.
QEMU_CPU="host,migratable=off,+invtsc,kvm-pv-ipi=off,kvm-pv-sched-yield=off,kvm-pv-tlb-flush=off,kvm-pv-unhalt=off"
CMDLINE="console=ttyS0 reboot=k panic=-1 ip=$GUEST_IP::$HOST_IP:255.255.255.0:volt-guest:eth0:off volt.run=/bench/run.sh"

die() { echo "compare-linux-virtio: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (network namespaces, TAPs)"
for f in "$VOLT_VMM" "$KERNEL" "$INITRD" "$DISK"; do
	[[ -f $f ]] || die "$f: missing (scripts/setup builds it)"
done
for t in "$QEMU" ip cpio busybox timeout awk; do
	command -v "$t" >/dev/null || die "$t: not found"
done
[[ -c /dev/kvm && -c /dev/net/tun ]] || die "needs /dev/kvm and /dev/net/tun"
[[ $EVENTS == [01] ]] || die "EVENTS=$EVENTS: want 0 or 1"
((EVENTS == 0)) || command -v perf >/dev/null || die "EVENTS=1: perf not found (Debian linux-perf)"
for v in ROUNDS RR_N PINGS DD4K_COUNT BOOT_TIMEOUT CPUS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done

# --- clean-up

TMP=$(mktemp -d /tmp/volt-cmp-virtio.XXXXXX)
NS_volt=voltcmp$$v
NS_qemu=voltcmp$$q
declare -A PID=()
NSES=()

cleanup() {
	local rc=$? vmm
	for vmm in "${!PID[@]}"; do
		if kill -0 "${PID[$vmm]}" 2>/dev/null; then
			kill "${PID[$vmm]}" 2>/dev/null || true
			for _ in 1 2 3 4 5 6 7 8 9 10; do
				kill -0 "${PID[$vmm]}" 2>/dev/null || break
				sleep 0.5
			done
			kill -9 "${PID[$vmm]}" 2>/dev/null || true
		fi
		wait "${PID[$vmm]}" 2>/dev/null || true
	done
	if [[ -n $LOGDIR ]]; then
		mkdir -p "$LOGDIR" && cp "$TMP"/*.console "$TMP"/*.stderr "$TMP"/*.flags "$TMP"/raw.tsv "$LOGDIR"/ 2>/dev/null || true
	fi
	for ns in "${NSES[@]}"; do
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the guest's bench overlay: /bench/run.sh (the workload) and
# /bench/handler.sh (one request per connection)

mkdir -p "$TMP/overlay/bench"
cat >"$TMP/overlay/bench/run.sh" <<'EOF'
#!/bin/busybox sh
# Serves the host's requests on TCP 7000 until it asks to quit.
/bin/busybox mkdir -p /tmp
echo "bench-listening vda_sectors=$(/bin/busybox cat /sys/block/vda/size)"
/bin/busybox nc -ll -p 7000 -e /bench/handler.sh
echo bench-done
EOF
cat >"$TMP/overlay/bench/handler.sh" <<'EOF'
#!/bin/busybox sh
# One request: "dd BS COUNT" (timed O_DIRECT read of /dev/vda), "echo" (the
# connection becomes an echo stream), "irqs" (interrupts taken per virtio
# device), "flags" (the CPU flags the guest kernel sees), "quit" (stop the
# server).
read -r cmd a b
case "$cmd" in
dd)
	/bin/busybox adjtimex >/tmp/t0
	/bin/busybox dd if=/dev/vda of=/dev/null bs="$a" count="$b" iflag=direct 2>/tmp/dd
	st=$?
	/bin/busybox adjtimex >/tmp/t1
	/bin/busybox grep tv_ /tmp/t0 /tmp/t1
	/bin/busybox cat /tmp/dd
	echo "status $st"
	;;
echo)
	echo ok
	exec /bin/busybox cat
	;;
irqs)
	for d in /sys/bus/virtio/devices/virtio*; do
		echo "dev ${d##*/} $(/bin/busybox cat "$d/device")"
	done
	/bin/busybox grep virtio /proc/interrupts
	;;
flags)
	/bin/busybox grep -m1 '^flags' /proc/cpuinfo
	for d in /sys/bus/virtio/devices/virtio*; do
		echo "virtio device $(/bin/busybox cat "$d/device") features $(/bin/busybox cat "$d/features")"
	done
	/bin/busybox dmesg | /bin/busybox grep -i -e kvm -e clocksource -e 'virtio.*features' | /bin/busybox sed 's/^\[[ 0-9.]*\] //'
	;;
quit)
	echo bye
	/bin/busybox kill "$PPID"
	;;
*)
	echo "unknown request [$cmd]"
	;;
esac
EOF
chmod 755 "$TMP/overlay/bench" "$TMP/overlay/bench/"*.sh
(cd "$TMP/overlay" && find bench | cpio -o -H newc -R 0:0 --quiet) >"$TMP/overlay.cpio"
cat "$INITRD" "$TMP/overlay.cpio" >"$TMP/initramfs.cpio"
cp "$DISK" "$TMP/disk.img"
cat "$TMP/disk.img" >/dev/null # in the host's page cache for both
DISK_BYTES=$(stat -c %s "$TMP/disk.img")
DD1M_COUNT=$((DISK_BYTES / 1048576))
((DD1M_COUNT > 0)) || die "$DISK: smaller than 1 MiB"

# --- network namespaces and VMMs

setup_ns() {
	local ns=$1
	ip netns add "$ns"
	NSES+=("$ns")
	ip -n "$ns" link set lo up
}

# tap_up waits for the VMM to create its TAP, then gives it the host address.
tap_up() {
	local ns=$1 vmm=$2 i
	for i in $(seq 1 100); do
		if ip -n "$ns" link show vtap0 >/dev/null 2>&1; then
			ip -n "$ns" addr add "$HOST_IP/24" dev vtap0
			ip -n "$ns" link set vtap0 up
			return 0
		fi
		kill -0 "${PID[$vmm]}" 2>/dev/null || break
		sleep 0.1
	done
	die "$vmm: no TAP vtap0 in $ns; stderr: $(tail -5 "$TMP/$vmm.stderr")"
}

start_volt() {
	setup_ns "$NS_volt"
	ip netns exec "$NS_volt" "$VOLT_VMM" --kernel "$KERNEL" --initrd "$TMP/initramfs.cpio" \
		--memory "$MEMORY" --cpus "$CPUS" --guest-profile nested-pvm \
		--console "file:$TMP/volt.console" --cmdline "$CMDLINE" \
		--drive "id=data,path=$TMP/disk.img,readonly=true" \
		--net "tap=vtap0,mac=$GUEST_MAC" \
		</dev/null >"$TMP/volt.stdout" 2>"$TMP/volt.stderr" &
	PID[volt]=$!
	tap_up "$NS_volt" volt
}

start_qemu() {
	setup_ns "$NS_qemu"
	ip netns exec "$NS_qemu" "$QEMU" -M microvm,acpi=off -enable-kvm -cpu "$QEMU_CPU" \
		-m "$MEMORY" -smp "$CPUS" -no-reboot -display none -monitor none \
		-serial "file:$TMP/qemu.console" -device i8042 -global virtio-mmio.force-legacy=false \
		-kernel "$KERNEL" -initrd "$TMP/initramfs.cpio" -append "$CMDLINE $PROFILE_OPTS" \
		-drive "id=d0,file=$TMP/disk.img,format=raw,if=none,readonly=on" \
		-device virtio-blk-device,drive=d0 \
		-netdev tap,id=n0,ifname=vtap0,script=no,downscript=no \
		-device "virtio-net-device,netdev=n0,mac=$GUEST_MAC$QEMU_NET_OPTS" \
		</dev/null >"$TMP/qemu.stdout" 2>"$TMP/qemu.stderr" &
	PID[qemu]=$!
	tap_up "$NS_qemu" qemu
}

# wait_ready waits for the guest's bench-listening line.
wait_ready() {
	local vmm=$1 start=$SECONDS
	while ! grep -q '^bench-listening' "$TMP/$vmm.console" 2>/dev/null; do
		if ! kill -0 "${PID[$vmm]}" 2>/dev/null; then
			die "$vmm ended before the guest was ready; console tail:
$(tail -20 "$TMP/$vmm.console" 2>/dev/null)
stderr: $(tail -5 "$TMP/$vmm.stderr")"
		fi
		((SECONDS - start < BOOT_TIMEOUT)) || die "$vmm: guest not ready in $BOOT_TIMEOUT s; console tail:
$(tail -20 "$TMP/$vmm.console")"
		sleep 1
	done
	echo "$vmm: guest ready after $((SECONDS - start)) s ($(grep -m1 '^bench-listening' "$TMP/$vmm.console" | tr -d '\r'))" >&2
}

ns_of() { local v=NS_$1; echo "${!v}"; }

# --- measurements; each appends "vmm<TAB>metric<TAB>value" to $TMP/raw.tsv

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TMP/raw.tsv"; }

# measure_dd asks the guest for one timed dd and records its µs.
measure_dd() {
	local vmm=$1 metric=$2 bs=$3 count=$4 out us
	out=$(ip netns exec "$(ns_of "$vmm")" bash "$0" __ask "dd $bs $count" 900 | tr -d '\r')
	grep -qx 'status 0' <<<"$out" || die "$vmm: dd $bs $count failed: $out"
	grep -qx "$count+0 records in" <<<"$out" || die "$vmm: dd $bs $count read short: $out"
	us=$(awk '/t0:.*tv_sec/ {s0=$NF} /t0:.*tv_usec/ {u0=$NF} /t1:.*tv_sec/ {s1=$NF} /t1:.*tv_usec/ {u1=$NF}
		END { if (s0 == "" || s1 == "" || u0 == "" || u1 == "") exit 1; print (s1 - s0) * 1000000 + (u1 - u0) }' <<<"$out") ||
		die "$vmm: no timestamps in: $out"
	record "$vmm" "$metric" "$us"
}

measure_rr() {
	local vmm=$1 v
	ip netns exec "$(ns_of "$vmm")" bash "$0" __rr "$RR_N" >"$TMP/rr.out" || die "$vmm: TCP round trips failed"
	[[ $(wc -l <"$TMP/rr.out") == "$RR_N" ]] || die "$vmm: $(wc -l <"$TMP/rr.out") of $RR_N round trips"
	while read -r v; do record "$vmm" tcp-rr-us "$v"; done <"$TMP/rr.out"
}

# measure_ping records each answered echo's RTT, and how many of PINGS
# were not answered (a guest starved of CPU on this shared host answers
# late, after busybox ping's 5 s wait; counted, not hidden).
measure_ping() {
	local vmm=$1 got
	ip netns exec "$(ns_of "$vmm")" busybox ping -c "$PINGS" -i 0.2 -W 5 "$GUEST_IP" >"$TMP/ping.out" || true
	got=$(grep -c 'time=' "$TMP/ping.out" || true)
	record "$vmm" ping-lost $((PINGS - got))
	((got > 0)) || die "$vmm: no ping answered: $(cat "$TMP/ping.out")"
	# busybox ping prints ms with three decimals; recorded in µs.
	sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' "$TMP/ping.out" | awk '{ printf "%.0f\n", $1 * 1000 }' |
		while read -r v; do record "$vmm" ping-us "$v"; done
}

# cpu_ms prints the CPU time (user + system, all threads, ms) the VMM
# process has used: its vCPU thread's time includes KVM's emulation of the
# guest kernel, so a measurement's share tells a guest that was slow
# because it ran more from one that waited for a core.
HZ=$(getconf CLK_TCK)
cpu_ms() { awk -v hz="$HZ" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/${PID[$1]}/stat"; }

# KVM events counted per measurement with EVENTS=1 (perf stat on the VMM
# process): guest instructions KVM emulated (here: all guest-kernel work),
# exits to the VMM's user space, MMIO accesses (ioeventfd kicks included).
# Counting costs a little on every event, the same for both VMMs; the
# default run leaves it off so that its timings are undisturbed.
# (kvm_pvm here fires no kvm_exit or kvm_inj_virq, so the guest's own
# /proc/interrupts counts the interrupts instead.)
KVM_EVENTS=kvm:kvm_emulate_insn,kvm:kvm_userspace_exit,kvm:kvm_mmio

# guest_irqs prints "blk N" and "net N": interrupts the guest has taken from
# its virtio-blk (device ID 2) and virtio-net (ID 1) devices so far.
guest_irqs() {
	ip netns exec "$(ns_of "$1")" bash "$0" __ask irqs 120 | tr -d '\r' | awk '
		$1 == "dev" { kind[$2] = ($3 == "0x0002") ? "blk" : ($3 == "0x0001") ? "net" : $3; next }
		$NF ~ /^virtio[0-9]+$/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; count[$NF] += n }
		END { for (d in count) print kind[d], count[d] }'
}

# with_cpu METRIC VMM CMD... runs CMD and records METRIC-cpu-ms for VMM (and,
# with EVENTS=1, METRIC-<event> counts).
with_cpu() {
	local metric=$1 vmm=$2 c0 c1 perf= kind n
	shift 2
	if ((EVENTS)); then
		guest_irqs "$vmm" >"$TMP/irqs0"
		perf stat -x, -o "$TMP/perf.out" -e "$KVM_EVENTS" -p "${PID[$vmm]}" 2>"$TMP/perf.err" &
		perf=$!
		sleep 0.5 # perf opens its counters
	fi
	c0=$(cpu_ms "$vmm")
	"$@"
	c1=$(cpu_ms "$vmm")
	record "$vmm" "$metric-cpu-ms" $((c1 - c0))
	if [[ -n $perf ]]; then
		kill -INT "$perf"
		wait "$perf" || true
		awk -F, '$3 ~ /^kvm:/ && $1 ~ /^[0-9]+$/ { sub(/^kvm:kvm_/, "", $3); print $3, $1 }' "$TMP/perf.out" |
			while read -r ev n; do record "$vmm" "$metric-$ev" "$n"; done
		grep -q kvm_emulate_insn "$TMP/perf.out" || die "perf stat counted nothing: $(cat "$TMP/perf.err" "$TMP/perf.out")"
		# The irqs requests' own traffic (one connection) lands in the
		# net count: measured alone as irq-bracket.
		guest_irqs "$vmm" >"$TMP/irqs1"
		while read -r kind n; do
			record "$vmm" "$metric-irq-$kind" $((n - $(awk -v k="$kind" '$1 == k { print $2 }' "$TMP/irqs0")))
		done <"$TMP/irqs1"
	fi
}

round() {
	local vmm=$1
	record "$vmm" load1 "$(cut -d' ' -f1 /proc/loadavg)"
	with_cpu dd-1M "$vmm" measure_dd "$vmm" dd-1M-us 1M "$DD1M_COUNT"
	with_cpu dd-4K "$vmm" measure_dd "$vmm" dd-4K-us 4k "$DD4K_COUNT"
	with_cpu dd-0 "$vmm" measure_dd "$vmm" dd-0-us 4k 0
	with_cpu tcp-rr "$vmm" measure_rr "$vmm"
	with_cpu ping "$vmm" measure_ping "$vmm"
	((EVENTS == 0)) || with_cpu irq-bracket "$vmm" true
}

# --- the session

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "start $(date -u '+%F %T') UTC, load $LOAD_START; volt-vmm $VOLT_VMM, $("$QEMU" --version | head -1)" >&2
# Booted one after the other: one guest kernel in the emulator at a time
# keeps this script to about one core (the first guest idles meanwhile).
start_volt
wait_ready volt
start_qemu
wait_ready qemu

# Same kernel command line under both, apart from the devices each declares.
cmdline_of() { grep -m1 'Command line:' "$TMP/$1.console" | tr -d '\r' | sed 's/.*Command line: //' | tr ' ' '\n' | grep -v '^virtio_mmio.device=' | sort | tr '\n' ' '; }
if [[ $(cmdline_of volt) != "$(cmdline_of qemu)" ]]; then
	echo "warning: the guests' kernel command lines differ:
  volt: $(cmdline_of volt)
  qemu: $(cmdline_of qemu)" >&2
fi

: >"$TMP/raw.tsv"
# Same CPU and devices as seen by both guests: /proc/cpuinfo flags, the
# negotiated virtio features and the kernel's KVM/clocksource lines (any
# difference printed).
for vmm in volt qemu; do
	ip netns exec "$(ns_of "$vmm")" bash "$0" __ask flags 120 | tr -d '\r' >"$TMP/$vmm.flags"
done
if ! diff -u --label volt --label qemu "$TMP/volt.flags" "$TMP/qemu.flags" >"$TMP/flags.diff"; then
	echo "note: the guests' CPU flags / KVM lines differ:" >&2
	cat "$TMP/flags.diff" >&2
fi
# Warm-up, not recorded: ARP, the first connection, the first dd's page-ins.
for vmm in volt qemu; do
	ip netns exec "$(ns_of "$vmm")" busybox ping -c 1 -W 30 "$GUEST_IP" >/dev/null || die "$vmm: guest does not answer ping"
	ip netns exec "$(ns_of "$vmm")" bash "$0" __ask "dd 4k 1" 300 >/dev/null
done
LOAD_MEAS=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 4 == 1 || r % 4 == 0)); then order="volt qemu"; else order="qemu volt"; fi
	for vmm in $order; do
		echo "round $r/$ROUNDS: $vmm (load $(cut -d' ' -f1 /proc/loadavg))" >&2
		round "$vmm"
	done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# Orderly stop: the guest's server quits, volt-init powers the guest off.
for vmm in volt qemu; do
	ip netns exec "$(ns_of "$vmm")" bash "$0" __ask quit 60 >/dev/null || true
done
for vmm in volt qemu; do
	for _ in $(seq 1 90); do kill -0 "${PID[$vmm]}" 2>/dev/null || break; sleep 1; done
	if kill -0 "${PID[$vmm]}" 2>/dev/null; then
		echo "$vmm: still running 90 s after quit; killed" >&2
	else
		wait "${PID[$vmm]}" && rc=0 || rc=$?
		echo "$vmm: exited with status $rc" >&2
	fi
done

[[ -z $RAW ]] || cp "$TMP/raw.tsv" "$RAW"

# --- summary: median, p90 (nearest rank), n; ratios volt/QEMU of medians

stats() { # vmm metric -> "n median p90 min"
	awk -F'\t' -v v="$1" -v m="$2" '$1 == v && $2 == m { print $3 }' "$TMP/raw.tsv" | sort -n |
		awk '{ a[NR] = $1 } END {
			if (NR == 0) { print "0 - - -"; exit }
			med = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
			k = int(0.9 * NR); if (k < 0.9 * NR) k++
			printf "%d %.10g %.10g %.10g\n", NR, med, a[k], a[1] }'
}

echo
echo "Linux virtio: volt-vmm vs QEMU microvm; $(date -u '+%F %T') UTC; load start $LOAD_START, measuring $LOAD_MEAS, end $LOAD_END"
echo "kernel $KERNEL, initramfs $INITRD + bench overlay, disk $DISK ($DISK_BYTES bytes, read-only), memory $MEMORY, vCPUs $CPUS, rounds $ROUNDS"
printf '%-22s %7s %12s %12s %12s %12s %12s %12s %9s\n' metric n volt-p50 volt-p90 qemu-p50 qemu-p90 volt-min qemu-min p50-ratio
metrics="dd-1M-us dd-4K-us dd-0-us tcp-rr-us ping-us ping-lost load1"
for m in dd-1M dd-4K dd-0 tcp-rr ping; do
	metrics+=" $m-cpu-ms"
	((EVENTS == 0)) || metrics+=" $m-emulate_insn $m-userspace_exit $m-mmio $m-irq-blk $m-irq-net"
done
((EVENTS == 0)) || metrics+=" irq-bracket-irq-blk irq-bracket-irq-net irq-bracket-emulate_insn"
for m in $metrics; do
	read -r vn vmed vp90 vmin < <(stats volt "$m")
	read -r qn qmed qp90 qmin < <(stats qemu "$m")
	ratio=$(awk -v a="$vmed" -v b="$qmed" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
	printf '%-22s %7s %12s %12s %12s %12s %12s %12s %9s\n' "$m" "$vn/$qn" "$vmed" "$vp90" "$qmed" "$qp90" "$vmin" "$qmin" "$ratio"
done
awk -F'\t' '$2 == "ping-lost" { lost[$1] += $3 } $2 == "ping-us" { got[$1]++ }
	END { printf "pings unanswered: volt %d of %d, qemu %d of %d\n", lost["volt"], lost["volt"] + got["volt"], lost["qemu"], lost["qemu"] + got["qemu"] }' "$TMP/raw.tsv"
# Derived: throughput from the dd medians (MiB/s, with and without the
# dd-0 bracket cost) and µs per 4 KiB request.
read -r _ v1 _ < <(stats volt dd-1M-us); read -r _ q1 _ < <(stats qemu dd-1M-us)
read -r _ v4 _ < <(stats volt dd-4K-us); read -r _ q4 _ < <(stats qemu dd-4K-us)
read -r _ v0 _ < <(stats volt dd-0-us); read -r _ q0 _ < <(stats qemu dd-0-us)
awk -v mib="$DD1M_COUNT" -v n4="$DD4K_COUNT" -v v1="$v1" -v q1="$q1" -v v4="$v4" -v q4="$q4" -v v0="$v0" -v q0="$q0" 'BEGIN {
	printf "dd bs=1M: volt %.2f MiB/s (%.2f net of dd-0), qemu %.2f MiB/s (%.2f net), volt/qemu throughput %.3f\n",
		mib / (v1 / 1e6), mib / ((v1 - v0) / 1e6), mib / (q1 / 1e6), mib / ((q1 - q0) / 1e6), q1 / v1
	printf "dd bs=4k: volt %.0f us/request (%.0f net of dd-0), qemu %.0f (%.0f net), volt/qemu %.3f (net %.3f)\n",
		v4 / n4, (v4 - v0) / n4, q4 / n4, (q4 - q0) / n4, v4 / q4, (v4 - v0) / (q4 - q0)
}'
