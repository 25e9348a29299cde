#!/usr/bin/env bash
# The install's OS write against `dd` of the same bytes in the same guest:
# boots an installer image under qemu (TCG, OVMF) with ssbuild.bench=dd
# added to its default boot entry, so the installer, after a normal install
# onto a blank sparse disk, writes os.img once more the way
# `dd bs=4M conv=fsync` would (page cache dropped before each write) and
# prints both times (appliance/install/bench.go).
# Usage (root): bash bench/install-dd.sh [INSTALLER.IMG]
#   default image: the demo installer, built into a temporary folder
#   MAC=...        the NIC's MAC (default demo1's, 02:5e:00:00:01:01)
#   RUNS=N         boots (default 1), each on a fresh disk
set -euo pipefail
cd "$(dirname "$0")/.."
mac=${MAC:-02:5e:00:00:01:01}
runs=${RUNS:-1}
work=$(mktemp -d /tmp/ssbuild-bench-install.XXXXXX)
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

img=${1:-}
if [ -z "$img" ]; then
  make -s build >/dev/null
  bin/ssbuild installer --recipe demo --out "$work/installer" --epoch 1700000000 >/dev/null
  img=$work/installer/installer.img
fi
# A copy whose default entry (on the ESP, 1 MiB into the image) has the switch.
cp --sparse=always "$img" "$work/stick.img"
entry=::/loader/entries/ssbuild-installer.conf
mtype -i "$work/stick.img@@1M" "$entry" | sed -e 's/^options .*/& ssbuild.bench=dd/' >"$work/entry.conf"
grep -q 'ssbuild.bench=dd' "$work/entry.conf"
mcopy -o -i "$work/stick.img@@1M" "$work/entry.conf" "$entry"

for run in $(seq "$runs"); do
  rm -f "$work/disk.raw"
  truncate -s 80G "$work/disk.raw"
  cp /usr/share/OVMF/OVMF_VARS.fd "$work/vars.fd"
  qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -display none -monitor none -no-reboot \
    -serial "file:$work/console.log" \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
    -drive "if=pflash,format=raw,file=$work/vars.fd" \
    -device qemu-xhci -drive "if=none,id=stick,format=raw,snapshot=on,file=$work/stick.img" \
    -device usb-storage,drive=stick -drive "if=virtio,format=raw,file=$work/disk.raw" \
    -netdev user,id=n0,restrict=on -device "e1000,netdev=n0,romfile=,mac=$mac" &
  qemu_pid=$!
  timeout 30m tail -f --pid="$qemu_pid" /dev/null || kill "$qemu_pid"
  wait "$qemu_pid" || true
  qemu_pid=
  if ! grep -a '^bench:' "$work/console.log"; then
    echo "run $run: no bench line; the installer's console:" >&2
    grep -a -v '^\[' "$work/console.log" | tail -30 >&2
    exit 1
  fi
  grep -a -E '^verify payload: done' "$work/console.log" || true
done
