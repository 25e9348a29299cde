#!/usr/bin/env bash
# Installs the Debian packages that ssbuild's build and tests need, on a fresh
# Debian 12 machine with Go and root. Idempotent: when everything is present it
# returns at once. Not root: it only lists what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# One package per line in scripts/apt-packages.txt, '#' starts a comment.
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/apt-packages.txt)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing Debian packages (run as root to install): ${missing[*]}" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
