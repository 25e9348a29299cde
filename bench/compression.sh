#!/usr/bin/env bash
# Compression of the LXD image's rootfs, before (one core) and after (every
# core), on the same input: the debootstrapped bookworm tree the tests
# share (images/rootfs/rootfstest; built once, then cached under /tmp).
#   squashfs: mksquashfs -processors 1 against -processors $(nproc), gzip and xz
#   container.tar.gz: one gzip stream (klauspost/compress/gzip, as before)
#                     against pgzip on every core
# Each pair runs in turn, one iteration each (images/lxdimage/bench_test.go).
# Usage (root): bash bench/compression.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=libsqlite3"
runs=${1:-3}
work=$(mktemp -d /tmp/ssbuild-bench-compression.XXXXXX)
trap 'rm -rf "$work"' EXIT
. bench/pairs.sh
go test -c -o "$work/lxdimage.test" ./images/lxdimage
echo "compression of the bookworm test tree, $runs pairs ($(nproc) cores):"
echo "squashfs gzip:"
pairs "$runs" "$work/lxdimage.test" "one core (-processors 1)" BenchmarkSquashfsGzipOneCore \
  "every core (as built)" BenchmarkSquashfsGzip
echo "squashfs xz:"
pairs "$runs" "$work/lxdimage.test" "one core (-processors 1)" BenchmarkSquashfsXzOneCore \
  "every core (as built)" BenchmarkSquashfsXz
echo "container.tar.gz:"
pairs "$runs" "$work/lxdimage.test" "one gzip stream (before)" BenchmarkUnifiedTarballOneStream \
  "pgzip, every core (as built)" BenchmarkUnifiedTarball
