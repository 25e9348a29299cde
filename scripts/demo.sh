#!/usr/bin/env bash
# `make demo`: the main job on the shipped demo recipe, as far as it goes
# today: validate and plan, then build the demo base image. The demo's one
# Docker image (ssbuild-demo/web:1) is made here with `docker import` of a
# busybox tree in a private dockerd, since no registry is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/ssbuild
out=${DEMO_OUT:-out/demo-image}

"$bin" plan --recipe demo
echo

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: building the image needs root (debootstrap, chroot, mounts); stopping after the plan." >&2
  exit 0
fi
bash scripts/install-deps.sh

work=$(mktemp -d /tmp/ssbuild-demo.XXXXXX)
dockerd_pid=
containerd_pid=
cleanup() {
  # Stop only the daemons this script started, by PID.
  [ -n "$dockerd_pid" ] && kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null || true
  [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null || true
  umount -R "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

containerd --address "$work/containerd.sock" --root "$work/containerd" --state "$work/containerd-state" \
  >"$work/containerd.log" 2>&1 &
containerd_pid=$!
dockerd --host "unix://$work/docker.sock" --data-root "$work/data" --exec-root "$work/exec" \
  --pidfile "$work/dockerd.pid" --containerd "$work/containerd.sock" --bridge none --iptables=false \
  --ip-masq=false >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST="unix://$work/docker.sock"
for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version >/dev/null || { tail "$work/dockerd.log"; exit 1; }

# A tiny web image: busybox with a page, tagged as the demo recipe names it.
mkdir -p "$work/web/bin" "$work/web/www"
cp "$(command -v busybox)" "$work/web/bin/busybox"
ln -s busybox "$work/web/bin/sh"
echo "served by the ssbuild demo" > "$work/web/www/index.html"
tar -C "$work/web" --sort=name --mtime=@0 --owner=0 --group=0 -c . |
  docker import -c 'CMD ["/bin/busybox","httpd","-f","-p","80","-h","/www"]' - ssbuild-demo/web:1 >/dev/null

rm -rf "$out"
"$bin" image --recipe demo --out "$out" --docker-host "$DOCKER_HOST" --epoch "${SOURCE_DATE_EPOCH:-1700000000}"
(cd "$out" && sha256sum --quiet -c SHA256SUMS && echo "demo: $out verified (SHA256SUMS)")

# Deploy the demo sites onto three throw-away hosts on this machine (network
# namespaces, one LXD each, formed into a cluster by their own cluster
# service) and ask every site through a member's port 80.
echo
echo "demo: deploying the demo sites onto a three-host cluster on this machine"
go run ./scripts/demo-deploy --image "$out"
