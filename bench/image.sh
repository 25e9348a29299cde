#!/usr/bin/env bash
# Prints, side by side in one run, how long `ssbuild image` takes for the
# demo recipe (without its Docker images and deployments, so no daemon is needed):
#   cold      empty cache: debootstrap + apt + squashfs + tarballs
#   layer     the rootfs+packages layer cached, no output cache
#             (--no-output-cache: what a rebuild cost before the output cache)
#   rebuild   nothing changed: every artifact reused from the output cache
# with each one's ratio to the cold build (the goal for the rebuild: <= 5%),
# plus `cp -a` of the tree for scale, and whether the outputs are identical.
# Usage (root): bash bench/image.sh   — uses a fresh cache under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
work=$(mktemp -d /tmp/ssbuild-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Without Docker images, and so without the deployments whose stacks name them.
bin/ssbuild recipe show --raw demo | sed -e 's/^  dockerImages:.*/  dockerImages: []/' -e '/^    - ref: /d' |
	awk '/^deployments:/ { skip = 1; next } /^[a-z]/ { skip = 0 } !skip' > "$work/recipe.yaml"

secs() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }'; }
img() { bin/ssbuild image -r "$work/recipe.yaml" --cache "$work/cache" --epoch 1700000000 "$@"; }
cold=$(secs img --out "$work/cold")
layer=$(secs img --out "$work/layer" --no-output-cache)
warm=$(secs img --out "$work/rebuild")
tree=$(ls -d "$work"/cache/layers/*/rootfs | head -1)
size=$(du -sm "$tree" | cut -f1)
copy=$(secs cp -a "$tree" "$work/copy")
same=yes
for d in layer rebuild; do
	diff -r "$work/cold" "$work/$d" >/dev/null || same=no
done
pct() { awk -v a="$1" -v b="$cold" 'BEGIN { printf "%5.1f%%", 100 * a / b }'; }
printf '%-58s %8s %8s\n' "demo image ($(nproc) cores)" seconds "of cold"
printf '%-58s %8.1f %8s\n' "cold build (debootstrap + apt + squashfs + tarballs)" "$cold" "$(pct "$cold")"
printf '%-58s %8.1f %8s\n' "rebuild, rootfs layer cached, --no-output-cache" "$layer" "$(pct "$layer")"
printf '%-58s %8.1f %8s\n' "rebuild, nothing changed (output cache)" "$warm" "$(pct "$warm")"
printf '%-58s %8.1f %8s\n' "cp -a of the $size MiB tree, for scale" "$copy" "$(pct "$copy")"
printf 'outputs byte-identical to the cold build (diff -r): %s\n' "$same"
