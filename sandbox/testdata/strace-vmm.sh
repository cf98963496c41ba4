#!/usr/bin/env bash
# How the rule tables were found: volt-vmm under strace -f, booting the
# probe with 2 vCPUs, pausing, snapshotting, resuming and powering off
# through its API, then restoring the snapshot in a new process. Prints the
# system calls made after the first KVM_RUN (what the filters must allow).
# Needs root, /dev/kvm, strace (Debian: strace), curl; run from the repo root.
set -euo pipefail
V=${V:-bin/volt-vmm}
P=${P:-build/guest/probe.elf}
D=$(mktemp -d)
trap 'exec 3>&- 2>/dev/null; rm -rf "$D"' EXIT
S=$D/api.sock
mkdir "$D/snap"
mkfifo "$D/in"
strace -f -qq -o "$D/boot.trace" "$V" --kernel "$P" --memory 128M --cpus 2 --api-sock "$S" <"$D/in" >"$D/boot.out" 2>&1 &
vmm=$!
exec 3>"$D/in"
for _ in $(seq 200); do [ -S "$S" ] && break; sleep 0.05; done
c() { curl -sf --unix-socket "$S" -X "$1" "http://localhost$2" ${3:+-d "$3"} >/dev/null; }
c PUT /actions '{"action_type":"InstanceStart"}'
sleep 1
c PATCH /vm '{"state":"Paused"}'
c PUT /snapshot/create "{\"snapshot_path\":\"$D/snap/vm.state\",\"mem_file_path\":\"$D/snap/vm.mem\"}"
c PATCH /vm '{"state":"Resumed"}'
echo poweroff >&3
wait "$vmm"
printf 'echo restored\npoweroff\n' | strace -f -qq -o "$D/restore.trace" "$V" --restore "$D/snap" >"$D/restore.out" 2>&1
for f in boot restore; do
	echo "$f: system calls after the first KVM_RUN (count):"
	awk '/KVM_RUN/{s=1} s' "$D/$f.trace" | grep -v -- '---\|+++\|resumed>' | awk '{print $2}' | sed -E 's/\(.*//' | sort | uniq -c | sort -rn
	echo "$f: ioctl requests after the first KVM_RUN:"
	awk '/KVM_RUN/{s=1} s' "$D/$f.trace" | grep -oE 'ioctl\([0-9]+, [A-Z_0-9]+' | sed -E 's/ioctl\([0-9]+, //' | sort | uniq -c
done
