#!/usr/bin/env bash
# Installer image assembly against `cp` + `sync` of the same 560 MiB
# (kernel, initramfs, systemd-boot, a 512 MiB incompressible os.img, a
# recipe) on the same disk, in turn, one run of each per pair; prints the
# medians and the median ratio (images/installer/bench_test.go). First with
# os.img's digest given (as installerbuild gives the output cache's), then
# without (the build hashes os.img before packing it).
# Usage (root, mksquashfs installed): bash bench/assembly.sh [RUNS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=libsqlite3"
runs=${1:-5}
work=$(mktemp -d /tmp/ssbuild-bench-assembly.XXXXXX)
trap 'rm -rf "$work"' EXIT
. bench/pairs.sh
go test -c -o "$work/installer.test" ./images/installer
echo "installer assembly vs cp+sync of the same bytes, $runs pairs ($(nproc) cores):"
pairs "$runs" "$work/installer.test" "installer.Build (560 MiB of inputs)" BenchmarkAssemble \
  "cp + sync -f of the same files" BenchmarkCopyInputs
echo "the same without os.img's digest given:"
pairs "$runs" "$work/installer.test" "installer.Build, os.img hashed by the build" BenchmarkAssembleUnknownSums \
  "cp + sync -f of the same files" BenchmarkCopyInputs
