#!/usr/bin/env bash
# `make demo`: the main job on the shipped demo recipe, as far as it goes
# today: validate and plan, build the demo base image, build the demo
# installer (USB image) carrying it, and boot that image in qemu (TCG, OVMF)
# to install a virtual host (demo1, by its MAC) onto a blank sparse disk.
# The demo's Docker images (ssbuild-demo/web:1, busybox, and
# ssbuild-demo/postgres:15, Debian's PostgreSQL) are made here with
# `docker import` of a small tree in a private dockerd, since no registry
# is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/ssbuild
out=${DEMO_OUT:-out/demo-image}
installer_out=${DEMO_INSTALLER_OUT:-out/demo-installer}
host_dir=${DEMO_HOST_DIR:-out/demo-host}
epoch=${SOURCE_DATE_EPOCH:-1700000000}

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
qemu_pid=
cleanup() {
  # Stop only the processes this script started, by PID.
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true
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

# The demo's database: Debian bookworm's postgresql-15 cut down into a
# small tree (cached beside the base image's rootfs after the first run),
# imported the same way, as ssbuild-demo/postgres:15.
pg_start=$(date +%s)
go run ./scripts/demo-postgres --cache "${XDG_CACHE_HOME:-$HOME/.cache}/ssbuild"
echo "demo: ssbuild-demo/postgres:15 made in $(( $(date +%s) - pg_start )) s"

rm -rf "$out"
"$bin" image --recipe demo --out "$out" --docker-host "$DOCKER_HOST" --epoch "$epoch"
(cd "$out" && sha256sum --quiet -c SHA256SUMS && echo "demo: $out verified (SHA256SUMS)")
# The private dockerd is not needed any more.
kill "$dockerd_pid" && wait "$dockerd_pid" 2>/dev/null || true
dockerd_pid=

echo
echo "demo: building the installer (USB image) for the demo's three hosts, carrying the base image"
rm -rf "$installer_out"
"$bin" installer --recipe demo --out "$installer_out" --base-image "$out" --epoch "$epoch"
(cd "$installer_out" && sha256sum --quiet -c SHA256SUMS && echo "demo: $installer_out/installer.img verified (SHA256SUMS)")

# A virtual host: OVMF, the image as a USB stick (read-only for the guest:
# snapshot=on), a blank sparse 80 GiB disk, and a NIC with demo1's MAC, by
# which the installer tells that this machine is demo1.
echo
echo "demo: booting $installer_out/installer.img in qemu (TCG; a few minutes) to install demo1 onto $host_dir/disk.raw"
rm -rf "$host_dir"
mkdir -p "$host_dir"
truncate -s 80G "$host_dir/disk.raw"
cp /usr/share/OVMF/OVMF_VARS.fd "$host_dir/OVMF_VARS.fd"
qemu_log="$host_dir/install-console.log"
: >"$qemu_log"
qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -display none -monitor none -no-reboot \
  -serial "file:$qemu_log" \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
  -drive "if=pflash,format=raw,file=$host_dir/OVMF_VARS.fd" \
  -device qemu-xhci -drive "if=none,id=stick,format=raw,snapshot=on,file=$installer_out/installer.img" \
  -device usb-storage,drive=stick \
  -drive "if=virtio,format=raw,file=$host_dir/disk.raw" \
  -netdev user,id=n0,restrict=on -device e1000,netdev=n0,romfile=,mac=02:5e:00:00:01:01 &
qemu_pid=$!
# The installer's own lines (not the kernel's or the firmware's), as they come.
tail -n +1 -f --pid="$qemu_pid" "$qemu_log" | grep --line-buffered -a -E '^(ssbuild installer|this machine|target disk|verify payload|write OS|install|firmware boot entry|WARNING|no UEFI|payload signed|/dev/|continuing|  [A-Za-z])' || true
wait "$qemu_pid" || true
qemu_pid=
if ! grep -q -a "installed demo1 onto" "$qemu_log"; then
  echo "demo: the install did not finish; the console is in $qemu_log" >&2
  exit 1
fi
echo
echo "demo: demo1 installed; its disk ($host_dir/disk.raw):"
sgdisk -p "$host_dir/disk.raw" | sed -n '/^Number/,$p'
echo
echo "demo: boot the installed host with:"
echo "  qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -nographic \\"
echo "    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \\"
echo "    -drive if=pflash,format=raw,file=$host_dir/OVMF_VARS.fd -drive if=virtio,format=raw,file=$host_dir/disk.raw"

# Deploy the demo sites onto three throw-away hosts on this machine (network
# namespaces, one LXD each, each running its own `ssbuild appliance run`:
# they form the cluster and the initiator deploys the recipe, as installed
# hosts do on first boot) and ask every site through a member's port 80.
echo
echo "demo: deploying the demo sites onto a three-host cluster on this machine"
go run ./scripts/demo-deploy --image "$out" --ssbuild "$bin"
