#!/usr/bin/env bash
# A cold `ssbuild image` of the demo recipe (without its Docker images and
# deployments, as bench/image.sh: no daemon needed) with the ssbuild of an older commit and
# with this tree's, in turn (old, new, old, new ...), each build with a cache
# folder of its own that starts empty: debootstrap, apt, squashfs and
# tarballs every time. There is no package cache to share: each debootstrap
# downloads from the recipe's mirror (the new deb cache, CACHE/debs, is inside
# that folder, so it starts empty too). Prints the load, each build's seconds,
# the medians and the pair-by-pair ratio old/new, then compares what the two
# produced: artifact names, bytes, and the file trees inside the squashfs and
# the tarballs (unpacked as root: type, mode, owner, mtime, size, link target,
# contents).
# Usage (root): bash bench/cold-vs-before.sh [PAIRS] [OLD_COMMIT]
#   PAIRS default 2; OLD_COMMIT default f73fb18, main just before the issue-17
#   work (e89df88 parallel compression, 55507dd output cache).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-2}
old_commit=${2:-f73fb18}
[ "$(id -u)" = 0 ] || { echo "cold-vs-before.sh: needs root (debootstrap, chroot)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/ssbuild-bench-cold.XXXXXX)
trap 'rm -rf "$work"' EXIT
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load at start (1/5/15 min): $(load)"

# Both binaries built the same way (make build: static, with dqlite), the old
# one from a git archive export of its commit.
make -s build >/dev/null 2>&1
cp bin/ssbuild "$work/ssbuild-new"
mkdir "$work/src-old"
git archive "$old_commit" | tar -x -C "$work/src-old"
make -s -C "$work/src-old" build VERSION="$old_commit" >/dev/null 2>&1 ||
	{ echo "building ssbuild at $old_commit failed" >&2; exit 1; }
cp "$work/src-old/bin/ssbuild" "$work/ssbuild-old"
rm -rf "$work/src-old"

# One recipe for both: this tree's demo without Docker images, and so
# without its deployments (whose stacks name those images: the build refuses a
# stack image the recipe does not pre-load). Its image section is the same as
# the old commit's demo (which lists one Docker image fewer; both are dropped).
"$work/ssbuild-new" recipe show --raw demo |
	sed -e 's/^  dockerImages:.*/  dockerImages: []/' -e '/^    - ref: /d' |
	awk '/^deployments:/ { skip = 1; next } /^[a-z]/ { skip = 0 } !skip' >"$work/recipe.yaml"

# cold SIDE RUN: one cold build into $work/SIDE-RUN/out; prints its seconds.
cold() {
	local d=$work/$1-$2 s
	mkdir "$d"
	s=$(date +%s.%N)
	if ! "$work/ssbuild-$1" image -r "$work/recipe.yaml" --cache "$d/cache" --epoch 1700000000 \
		--out "$d/out" >"$d/log" 2>&1; then
		echo "$1 build $2 failed:" >&2
		tail -20 "$d/log" >&2
		exit 1
	fi
	awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }'
	rm -rf "$d/cache"
}
# steps SIDE RUN: the build's own step times, on one line.
steps() { grep -o '[^ ]*[a-z][^:]*: done in [0-9.hms]*' "$work/$1-$2/log" | sed 's/: done in /=/; s|^copy rootfs to .*/|copy rootfs to …/|' | tr '\n' ' '; }

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
all_old= all_new= ratios=
echo "cold ssbuild image, demo recipe without Docker images or deployments, $pairs pairs ($(nproc) cores)"
for ((i = 1; i <= pairs; i++)); do
	l=$(load); to=$(cold old "$i")
	echo "  pair $i  old ($old_commit) $to s  (load before: $l)"
	echo "          steps: $(steps old "$i")"
	l=$(load); tn=$(cold new "$i")
	echo "  pair $i  new (this tree) $tn s  (load before: $l)"
	echo "          steps: $(steps new "$i")"
	all_old+="$to"$'\n' all_new+="$tn"$'\n'
	ratios+=$(awk -v a="$to" -v b="$tn" 'BEGIN { printf "%.2f", a / b }')$'\n'
done
list() { tr '\n' ' ' <<<"${1%$'\n'}"; }
printf '  %-28s median %6.1f s   (runs: %s)\n' "old ($old_commit)" "$(median <<<"${all_old%$'\n'}")" "$(list "$all_old")"
printf '  %-28s median %6.1f s   (runs: %s)\n' "new (this tree)" "$(median <<<"${all_new%$'\n'}")" "$(list "$all_new")"
printf '  %-28s median %6.2f     (pairs: %s)\n' "ratio old/new" "$(median <<<"${ratios%$'\n'}")" "$(list "$ratios")"
echo "load at the end of the builds: $(load)"

# tree DIR: one line per entry (type, mode, owner, mtime, size of non-directories, path, link
# target), then the device numbers of the device nodes (which diff -r does not compare).
tree() {
	(cd "$1" && find . -mindepth 1 -printf '%y %m %U:%G %T@ %s %p %l\n' | awk '$1 == "d" { $5 = "-" } 1' | sort -k6 &&
		find . \( -type c -o -type b \) -exec stat -c 'device %n %t:%T' {} + | sort)
}
# unpack FILE DIR: the file tree inside a squashfs or a tarball.
unpack() {
	mkdir "$2"
	case $1 in
	*.squashfs) unsquashfs -q -n -f -d "$2" "$1" >/dev/null ;;
	*.tar* | *.tgz) tar --numeric-owner -xpf "$1" -C "$2" ;;
	*) return 1 ;;
	esac
}
# same_trees A B: 0 when the two trees hold the same entries and contents.
same_trees() {
	local rc=0
	diff <(tree "$1") <(tree "$2") >"$work/tree.diff" || rc=1
	if [ $rc = 1 ]; then
		echo "      entries differ ($(grep -c '^[<>]' "$work/tree.diff") lines of diff; first ones):"
		grep '^[<>]' "$work/tree.diff" | head -10 | sed 's/^/        /'
	fi
	diff -r --no-dereference -q "$1" "$2" 2>&1 | grep -v 'special file while file .* special file$' >"$work/content.diff" || true
	if [ -s "$work/content.diff" ]; then
		rc=1
		echo "      contents differ ($(wc -l <"$work/content.diff") files; first ones, with their first differing lines):"
		head -5 "$work/content.diff" | sed "s|$work/||g; s/^/        /"
		awk '$1 == "Files" { print $2, $4 }' "$work/content.diff" | head -2 | while read -r fa fb; do
			diff "$fa" "$fb" | grep '^[<>]' | head -4 | cut -c1-150 | sed 's/^/          /' || true
		done
	fi
	return $rc
}

# compare A B LABEL: artifact names, bytes, then what is inside those whose bytes differ.
compare() {
	local a=$work/$1/out b=$work/$2/out f
	echo "outputs, $3:"
	if diff <(cd "$a" && find . -type f | sort) <(cd "$b" && find . -type f | sort) >"$work/names.diff"; then
		echo "  artifact names: the same ($(cd "$a" && find . -type f | sort | sed 's|^\./||' | tr '\n' ' '))"
	else
		echo "  artifact names differ:"
		sed 's/^/    /' "$work/names.diff"
	fi
	while read -r f; do
		[ -f "$b/$f" ] || continue
		if cmp -s "$a/$f" "$b/$f"; then
			echo "  $f: byte-identical"
			continue
		fi
		echo "  $f: bytes differ ($(stat -c %s "$a/$f") against $(stat -c %s "$b/$f") bytes)"
		if unpack "$a/$f" "$work/ta" 2>/dev/null && unpack "$b/$f" "$work/tb"; then
			same_trees "$work/ta" "$work/tb" && echo "    the file trees inside are the same (entries, owners, modes, mtimes, contents)"
		elif [ "$(stat -c %s "$a/$f")" -lt 65536 ]; then
			diff "$a/$f" "$b/$f" | grep '^[<>]' | head -16 | sed 's/^/    /' || true
		fi
		rm -rf "$work/ta" "$work/tb"
	done < <(cd "$a" && find . -type f | sort | sed 's|^\./||')
}
compare old-1 new-1 "old against new (pair 1)"
if [ "$pairs" -ge 2 ]; then
	compare old-1 old-2 "old against old (pairs 1 and 2: is the old build reproducible?)"
	compare new-1 new-2 "new against new (pairs 1 and 2)"
fi
echo "load at the end: $(load)"
