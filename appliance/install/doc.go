// Package install is the installer that runs as the init of the USB
// stick's initramfs (images/initramfs, images/installer): it installs one
// cluster host onto the machine's disk unattended. Everything is Go; the
// initramfs holds only the ssbuild binary and kernel modules.
//
// # How the init calls it
//
// After mounting /proc, /sys and devtmpfs on /dev and loading the modules
// (storage drivers, squashfs, ext4, loop):
//
//	if err := install.MountPayload("/sys", "/dev", "/run/payload"); err != nil { ... }
//	err := install.Run(ctx, install.Env{
//		SysRoot: "/sys", DevRoot: "/dev", ProcRoot: "/proc",
//		PayloadDir: "/run/payload", WorkDir: "/run",
//		Progress: progress.New(console, progress.Terminal),
//		Power:    install.Machine{},
//	})
//
// Run reboots or powers off on success (install.Machine), so it returns
// only with an error: the init prints it and stays, for the user to read
// (PID 1 must not exit). Run's errors name the device and the step.
//
// # What Run does, in order
//
//  1. When the initramfs carries the builder's public key (SignerKeyPath,
//     a signed build), checks SHA256SUMS.sig with it before reading anything
//     else of the payload and prints whose key it is; a payload re-signed
//     with another key, unsigned, or whose manifest changed is refused.
//     Verifies every payload file against SHA256SUMS. Nothing is written
//     before this succeeds; a tampered or corrupt stick aborts here.
//  2. Reads recipe.yaml and cluster.secret from the payload, and decides
//     which recipe host this machine is: ssbuild.host=NAME on the kernel
//     command line, else the host whose mac matches a NIC, else the only host.
//  3. Waits until the list of block devices has stayed the same for 2 s
//     (at most 30 s), lists disks from /sys/block, excludes the installer
//     media (every disk with a partition named SSBUILD-PAYLOAD, and the disk
//     the payload is mounted from), probes the first and last MiB of each
//     (Probe: partition tables, filesystems, LUKS, md RAID, LVM, ZFS, swap,
//     bcache, Ceph... and any non-zero byte as data), and selects the
//     target (SelectTarget): the recipe's serial, WWID or path (per host or
//     installer-wide), or the largest writable disk that is neither
//     removable nor on a hot-pluggable bus (USB, SD/MMC, FireWire, from its
//     sysfs device path); refused when too small, read-only, or holding
//     anything without installer.wipe (which then prints what it erases).
//  4. Installs (Install) as journalled steps: verified, partitioned,
//     os-written, esp-written, config-written, done. Before the first
//     write it checks, on the opened device, that the target is the disk
//     it chose (major:minor, serial, WWID, size, the bytes probed).
//  5. Powers off or reboots as installer.afterInstall says.
//
// # The payload (the stick's SSBUILD-PAYLOAD partition, squashfs)
//
//	SHA256SUMS       "<sha256>  <relative path>" for every file below
//	SHA256SUMS.sig   signed builds: SSHSIG (namespace ssbuild) of SHA256SUMS
//	os.img           ext4 image of the host OS root filesystem (4 KiB blocks)
//	esp/...          the target's ESP, copied verbatim: esp/EFI/BOOT/BOOTX64.EFI
//	                 (required), loader/, the kernel and initrd of the host OS
//	recipe.yaml      the recipe
//	cluster.secret   the cluster's pre-shared secret
//	base-image/...   optional (ssbuild installer --base-image): an `ssbuild image`
//	                 output folder, for the initiator's first-boot deploy
//
// # The target disk
//
//	0 .. 1 MiB-4 KiB    protective MBR, GPT
//	1 MiB-4 KiB         the install journal (one 4 KiB block, see journal.go)
//	1 MiB               1 "ESP"          EFI system partition, FAT32 labelled ESP
//	                    2 "ssbuild-os"   Linux filesystem, ext4 from os.img
//	                    3 "ssbuild-zfs"  6A898CC3-1DD2-11B2-99A6-080020736631, the rest,
//	                                     unformatted, for the LXD ZFS pool
//
// Every partition starts on a 1 MiB boundary; sizes come from
// installer.layout. The first boot finds them as /dev/disk/by-partlabel/
// ssbuild-os and ssbuild-zfs.
//
// # Where the host's config goes
//
// Into the OS filesystem itself, written by the kernel: the installer
// attaches a loop device to the OS partition's byte range of the target,
// mounts it as ext4 and writes, root-owned:
//
//	/etc/hostname
//	/etc/ssbuild/appliance.yaml             (handoff/config, 0644)
//	/etc/ssbuild/cluster.secret             (0600)
//	/etc/ssbuild/recipe.yaml                (the payload's recipe, 0644)
//	/etc/systemd/network/10-ssbuild.network (with a static address in the recipe)
//	/var/lib/ssbuild/base-image/...         (the initiator only, when the payload
//	                                         has base-image/; files 0644)
//
// Every host's appliance.yaml has a deploy section when the recipe has
// deployments: the first-boot service that holds the registry's deploy
// lease deploys /etc/ssbuild/recipe.yaml once the cluster has formed; the
// initiator's section names /var/lib/ssbuild/base-image when the stick
// carried one (the deploy imports it into LXD once for the whole cluster,
// so joiners get no copy and wait until it is there).
// The base image must fit the OS filesystem with 16 MiB to spare, checked
// before anything of it is written (after growing); each file is hashed as
// it is copied and checked against the manifest. A copy left by a cut
// short run is removed first, so the step is redone whole.
//
// While mounted it grows the filesystem to the whole partition
// (EXT4_IOC_RESIZE_FS, what resize2fs does online). If the kernel refuses
// (no CAP_SYS_RESOURCE, which an initramfs init always has), it writes
// /var/lib/ssbuild/grow-rootfs instead: the first boot must then run
// resize2fs on /dev/disk/by-partlabel/ssbuild-os. Enabling the first-boot
// unit is the OS image's job (enable it there, with
// ConditionPathExists=/etc/ssbuild/appliance.yaml).
//
// # Power cuts
//
// Each step is recorded in the journal after it completes, and a re-run
// (the stick booted again) continues after the last recorded step. A disk
// holding an unfinished journal of this payload (its manifest's digest)
// for this host is not refused as long as its partition table is still the
// one the install wrote (Resumable); a journal of another payload or host
// is data like any other, refused without installer.wipe. Every step
// rewrites its whole region, so a half-done step is redone, not patched. A
// disk whose journal says done for this payload and host is left alone and
// the machine powers off (the stick is still in; rebooting would loop).
//
// go-diskfs v1.9.4's FAT32 writer leaves two faults fsck.fat reports
// ("..'" of a directory in the root, the FSInfo free count); fatfix.Repair
// corrects them after the ESP is written.
package install
