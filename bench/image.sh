#!/usr/bin/env bash
# Prints how long `ssbuild image` takes for the demo recipe (without its
# Docker image, so no daemon is needed): a cold build (empty cache:
# debootstrap + apt + squashfs) and a rebuild that finds the rootfs with its
# packages in the cache, plus `cp -a` of the same tree for scale.
# Usage (root): bash bench/image.sh   — uses a fresh cache under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
work=$(mktemp -d /tmp/ssbuild-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
bin/ssbuild recipe show --raw demo | sed -e 's/^  dockerImages:.*/  dockerImages: []/' -e '/^    - ref: /d' > "$work/recipe.yaml"

secs() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }'; }
cold=$(secs bin/ssbuild image -r "$work/recipe.yaml" --cache "$work/cache" --out "$work/one" --epoch 1700000000)
warm=$(secs bin/ssbuild image -r "$work/recipe.yaml" --cache "$work/cache" --out "$work/two" --epoch 1700000000)
tree=$(ls -d "$work"/cache/layers/*/rootfs | head -1)
size=$(du -sm "$tree" | cut -f1)
copy=$(secs cp -a "$tree" "$work/copy")
same=no; cmp -s "$work/one/SHA256SUMS" "$work/two/SHA256SUMS" && same=yes
printf 'demo image, cold build (debootstrap + apt + squashfs gzip): %6.1f s\n' "$cold"
printf 'demo image, rebuild with the cached rootfs+packages layer:  %6.1f s\n' "$warm"
printf 'cp -a of the %d MiB tree, for scale:                        %6.1f s\n' "$size" "$copy"
printf 'outputs byte-identical: %s\n' "$same"
