#!/usr/bin/env bash
# Prints, side by side in one run, how fast a volume's tree is read
# through LXD's exec API (what `ssbuild backup` does for every Docker
# volume: appliance/backup's LXDRunner runs find and tar -c in the LXD
# instance through appliance/lxdexec.Stream) against tar inside the
# instance. One test-bed host (testkit/testbed: one LXD daemon in its own
# namespaces) runs one container of the bookworm test image, started by
# appliance/lxdexec's TestBenchBed, which holds it for the whole run; the
# tree is a 200 MiB file plus copies of /usr/share/doc and /usr/share/locale
# in a Docker volume's folder of the instance. The figures:
#   (a) tar -cf - DIR | cat >/dev/null inside the instance: the floor;
#   (b) that tar's stream copied to the host by lxdexec.Stream, with
#       tar's default 10 KiB records and with 32 KiB ones;
#   (c) the backup package's AddVolume (full, no files cache) through
#       LXDRunner vs LocalRunner on the same tree seen from the host (the
#       instance's rootfs in the dir pool).
# The bed is closed (daemon by PID, namespaces, bridge, mounts, files) on
# any exit of this script; a killed run's bed is removed by the next bed.
# Usage (root): bash bench/lxd-exec.sh [RUNS]   (RUNS pairs, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pairs.sh
runs=${1:-5}
export GOFLAGS=${GOFLAGS:--tags=libsqlite3} CGO_LDFLAGS_ALLOW=${CGO_LDFLAGS_ALLOW:--Wl,-z,now}
work=$(mktemp -d /var/tmp/ssbuild-bench-lxd.XXXXXX)
bed=
stop_bed() {
  if [[ -n $bed ]] && kill -0 "$bed" 2>/dev/null; then
    kill -TERM "$bed"
    wait "$bed" || { echo "the bed's holder exited $?:" >&2; tail -30 "$work/bed.log" >&2; }
  fi
  bed=
}
trap 'stop_bed; rm -rf "$work"' EXIT
go test -c -o "$work/lxdexec.test" ./appliance/lxdexec/
go test -c -o "$work/backup.test" ./appliance/backup/
SSBUILD_BENCH_LXD_BED="$work/bed.env" "$work/lxdexec.test" -test.run '^TestBenchBed$' -test.v >"$work/bed.log" 2>&1 &
bed=$!
while [[ ! -e $work/bed.env ]]; do
  kill -0 "$bed" 2>/dev/null || { wait "$bed" || true; echo "the bed did not start:" >&2; tail -30 "$work/bed.log" >&2; exit 1; }
  sleep 1
done
set -a
. "$work/bed.env"
set +a
export PAIRS_BYTES
PAIRS_BYTES=$(tar -cf - -C "$SSBUILD_BENCH_LXD_HOSTDIR" . | wc -c)
echo "tree: $(du -sm "$SSBUILD_BENCH_LXD_HOSTDIR" | cut -f1) MiB, $(find "$SSBUILD_BENCH_LXD_HOSTDIR" -type f | wc -l) files, tar stream $((PAIRS_BYTES >> 20)) MiB; test bed $(grep -o "bed [0-9a-f]*:" "$work/bed.log" | cut -d" " -f2 | tr -d :), LXD $(lxd --version); $runs pairs; $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo "(b) the exec stream vs (a) the floor:"
pairs "$runs" "$work/lxdexec.test" "lxdexec.Stream of tar -c to the host" BenchmarkStream "tar -c | cat >/dev/null in the instance" BenchmarkTarInside
echo "(b) with tar's records 10 KiB (its default) vs 32 KiB (-b 64, what the backup's tar -c uses; LXD sends at most 32 KiB a message):"
pairs "$runs" "$work/lxdexec.test" "lxdexec.Stream, tar's 10 KiB records" BenchmarkStream "lxdexec.Stream, tar -b 64 (32 KiB records)" BenchmarkStreamRecords32K
echo "(c) a volume's full backup, LXDRunner vs LocalRunner (MB/s of the tar stream):"
pairs "$runs" "$work/backup.test" "AddVolume through LXDRunner (exec)" BenchmarkVolumeLXD "AddVolume through LocalRunner (host)" BenchmarkVolumeLocal
stop_bed
