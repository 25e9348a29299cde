package lxdimage_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/testkit/kerneltest"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestVMImage builds the VM disk from two separate copies of a bootable
// bookworm tree (different ctimes and atimes, as two machines would have):
// the qcow2 must be byte-identical, its structure what sgdisk, blkid,
// e2fsck, fsck.fat, mtools and qemu-img accept, and it must boot: qemu
// with OVMF (TCG, no network) runs systemd-boot from the ESP, the tree's
// kernel finds the root by PARTUUID and systemd reaches its targets. LXD
// VMs cannot run here (no vhost-vsock); qemu boots the disk as LXD would
// attach it (UEFI, virtio).
func TestVMImage(t *testing.T) {
	testenv.RequireTools(t, "mkfs.ext4", "debugfs", "e2fsck", "qemu-img", "sgdisk", "blkid", "fsck.fat", "mtype",
		"qemu-system-x86_64")
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	tree := vmTree(t)
	treeCopy := filepath.Join(tmp, "tree-copy") // new ctimes and atimes
	run(t, "cp", "-a", tree, treeCopy)
	for out, tree := range map[string]string{a: tree, b: treeCopy} {
		spec := bookwormSpec(tree, out)
		spec.Formats = []lxdimage.Format{lxdimage.VM}
		build(t, spec)
	}
	for _, name := range []string{imagedir.DiskFile, imagedir.MetadataFile, imagedir.ManifestFile} {
		if ha, hb := sha256Of(t, filepath.Join(a, name)), sha256Of(t, filepath.Join(b, name)); ha != hb {
			t.Errorf("%s differs between builds from two copies of the tree", name)
			if name == imagedir.ManifestFile {
				out, _ := exec.Command("diff", filepath.Join(a, name), filepath.Join(b, name)).CombinedOutput()
				t.Logf("%s", out)
			}
		}
	}
	// LXD must refuse secure boot for it (systemd-boot is not signed).
	if meta := run(t, "tar", "-xzOf", filepath.Join(a, imagedir.MetadataFile), "metadata.yaml"); !strings.Contains(meta, `requirements.secureboot: "false"`) {
		t.Errorf("metadata.yaml does not declare requirements.secureboot false:\n%s", meta)
	}
	m := readManifest(t, a)
	if m.VMDisk == nil || len(m.Images) != 1 || m.Images[0].Type != "virtual-machine" {
		t.Fatalf("manifest: vm disk %+v, images %+v", m.VMDisk, m.Images)
	}
	for _, tool := range []string{"mkfs.ext4", "qemu-img"} {
		if m.Tools[tool] == "" {
			t.Errorf("manifest has no version of %s", tool)
		}
	}
	qcow2 := filepath.Join(a, imagedir.DiskFile)

	out := run(t, "qemu-img", "check", qcow2)
	if !strings.Contains(out, "No errors were found") {
		t.Errorf("qemu-img check:\n%s", out)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", qcow2)), &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" {
		t.Errorf("qemu-img info: format %q", info.Format)
	}

	raw := filepath.Join(tmp, "disk.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
	if out := run(t, "sgdisk", "-v", raw); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	table := run(t, "sgdisk", "-p", raw)
	if !strings.Contains(table, "Disk identifier (GUID): "+m.VMDisk.Disk) {
		t.Errorf("disk GUID is not the manifest's %s:\n%s", m.VMDisk.Disk, table)
	}
	parts := partitions(t, table)
	if len(parts) != 2 || parts[0].code != "EF00" || parts[0].name != "UEFI" || parts[1].code != "8300" || parts[1].name != "rootfs" {
		t.Fatalf("partitions %+v, want UEFI (EF00) and rootfs (8300):\n%s", parts, table)
	}
	if p2 := run(t, "sgdisk", "-i", "2", raw); !strings.Contains(p2, "Partition unique GUID: "+m.VMDisk.RootPartition) {
		t.Errorf("root partition GUID is not the manifest's %s:\n%s", m.VMDisk.RootPartition, p2)
	}
	if int64(parts[1].end+1)*512+1<<20 != info.VirtualSize {
		t.Errorf("disk is %d bytes, partitions end at sector %d: want 1 MiB for the backup GPT", info.VirtualSize, parts[1].end)
	}

	esp := extract(t, raw, parts[0], filepath.Join(tmp, "esp.img"))
	if got := run(t, "blkid", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat") || !strings.Contains(got, "LABEL=UEFI") {
		t.Errorf("ESP blkid:\n%s", got)
	}
	if out, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n on the ESP: %v\n%s", err, out)
	}
	// The ESP as the firmware reads it: the tree's systemd-boot, kernel and
	// initrd, byte for byte, and the loader config naming the root partition.
	kernel := kerneltest.Get(t)
	for name, src := range map[string]string{
		"EFI/BOOT/BOOTX64.EFI":         kernel.SystemdBoot(),
		"vmlinuz-" + kernel.Version:    kernel.Vmlinuz(),
		"initrd.img-" + kernel.Version: filepath.Join(kernel.Root, "boot", "initrd.img-"+kernel.Version),
	} {
		if got, want := sha256Hex(mtype(t, esp, name)), sha256Of(t, src); got != want {
			t.Errorf("ESP %s is not the tree's %s", name, src)
		}
	}
	if got := string(mtype(t, esp, "loader/loader.conf")); got != "default ssbuild.conf\ntimeout 0\n" {
		t.Errorf("ESP loader/loader.conf:\n%s", got)
	}
	entry := string(mtype(t, esp, "loader/entries/ssbuild.conf"))
	for _, want := range []string{
		"linux /vmlinuz-" + kernel.Version + "\n",
		"initrd /initrd.img-" + kernel.Version + "\n",
		"options root=PARTUUID=" + strings.ToLower(m.VMDisk.RootPartition) + " rw console=tty1 console=ttyS0\n",
	} {
		if !strings.Contains(entry, want) {
			t.Errorf("ESP loader/entries/ssbuild.conf lacks %q:\n%s", want, entry)
		}
	}

	root := extract(t, raw, parts[1], filepath.Join(tmp, "root.ext4"))
	got := run(t, "blkid", "-o", "export", root)
	for _, want := range []string{"TYPE=ext4", "LABEL=rootfs", "UUID=" + m.VMDisk.RootFS} {
		if !strings.Contains(got, want) {
			t.Errorf("root blkid lacks %s:\n%s", want, got)
		}
	}
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	if got := run(t, "debugfs", "-R", "cat /usr/lib/os-release", root); !strings.Contains(got, "VERSION_CODENAME=bookworm") {
		t.Errorf("/usr/lib/os-release in the root partition:\n%s", got)
	}
	stat := run(t, "debugfs", "-R", "stat /etc/shadow", root)
	for _, want := range []string{"Group:    42", "Mode:  0640", "mtime: 0x6553f100", "ctime: 0x6553f100", "atime: 0x6553f100"} {
		if !strings.Contains(stat, want) {
			t.Errorf("/etc/shadow in the root partition lacks %q:\n%s", want, stat)
		}
	}
	if dev := run(t, "debugfs", "-R", "stat /dev/null", root); !strings.Contains(dev, "Type: character special") {
		t.Errorf("/dev/null in the root partition:\n%s", dev)
	}

	// Boot it: UEFI firmware (OVMF, with its own copy of the variables),
	// the disk on virtio as LXD attaches it, writes thrown away.
	vars := filepath.Join(tmp, "OVMF_VARS.fd")
	run(t, "cp", "/usr/share/OVMF/OVMF_VARS.fd", vars)
	start := time.Now()
	serial, exited := kerneltest.RunQEMU(t, 6*time.Minute, "-m", "1024",
		"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
		"-drive", "if=pflash,format=raw,file="+vars,
		"-drive", "file="+qcow2+",if=virtio,format=qcow2,snapshot=on")
	t.Logf("booted and powered off in %v (TCG)", time.Since(start).Round(100*time.Millisecond))
	serial = ansiEscape.ReplaceAllString(serial, "") // systemd's colours
	for _, want := range []string{
		"Linux version " + kernel.Version,      // systemd-boot started the tree's kernel
		"Welcome to Debian GNU/Linux 12",       // the initrd found the root by PARTUUID
		"Reached target multi-user.target",     // systemd brought the system up
		"SSBUILD-VM-BOOTED root: /dev/vda2 rw", // the root partition, read-write
		"Started serial-getty@ttyS0",           // a login prompt on the serial console
	} {
		if !strings.Contains(serial, want) {
			t.Errorf("serial console lacks %q", want)
		}
	}
	if failed := kerneltest.Lines(serial, "FAILED"); len(failed) > 0 {
		t.Errorf("units failed during boot:\n%s", strings.Join(failed, "\n"))
	}
	if !exited {
		t.Error("the guest did not power off")
	}
	if t.Failed() {
		t.Logf("serial console:\n%s", serial)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

type partition struct {
	start, end int64
	code, name string
}

// partitions parses sgdisk -p's table lines.
func partitions(t *testing.T, table string) []partition {
	var parts []partition
	inTable := false
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "Number" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 7 {
			continue
		}
		start, _ := strconv.ParseInt(f[1], 10, 64)
		end, _ := strconv.ParseInt(f[2], 10, 64)
		parts = append(parts, partition{start: start, end: end, code: f[5], name: strings.Join(f[6:], " ")})
	}
	return parts
}

// extract copies a partition out of a raw disk image.
func extract(t *testing.T, raw string, p partition, out string) string {
	t.Helper()
	in, err := os.Open(raw)
	must(t, err)
	defer in.Close()
	f, err := os.Create(out)
	must(t, err)
	defer f.Close()
	_, err = io.Copy(f, io.NewSectionReader(in, p.start*512, (p.end-p.start+1)*512))
	must(t, err)
	return out
}

// vmTreeKey names the cached bootable tree; change it with vmTree's steps.
const vmTreeKey = "bookworm-systemd-sysv-udev-kmod-kerneltest-v1"

// vmTree returns a fresh copy of a bootable bookworm tree: the shared
// rootfs with systemd-sysv installed through images/chroot, and the kernel
// tree kerneltest already caches (linux-image-amd64's kernel, initrd and
// modules, systemd-boot-efi's binaries), so no kernel is installed twice.
// (and udev, kmod). The tree is cached as a rootfs layer; only a machine's first run
// installs. Added per test: a unit that reports how the root was mounted
// on the serial console once multi-user.target is reached, then powers
// off, so qemu ends by itself.
func vmTree(t *testing.T) string {
	t.Helper()
	kernel := kerneltest.Get(t)
	dest := filepath.Join(t.TempDir(), "rootfs")
	t.Cleanup(func() {
		if err := mounts.RemoveTree(dest); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	b := rootfs.Builder{CacheDir: rootfstest.CacheDir()}
	_, err := b.Derive(ctx, rootfs.Layer{
		Name: "bootable bookworm",
		Key:  vmTreeKey,
		Base: func(ctx context.Context, dir string) error {
			_, err := b.Debootstrap(ctx, rootfstest.Bookworm(), dir)
			return err
		},
		Build: func(ctx context.Context, dir string) error {
			s, err := chroot.Open(ctx, dir, chroot.Options{})
			if err != nil {
				return err
			}
			// udev and kmod as every real image has them: without udev
			// systemd waits 90 s for /dev/ttyS0's device unit.
			if err := s.Install(ctx, "systemd-sysv", "udev", "kmod"); err != nil {
				s.Close()
				return err
			}
			if err := s.Close(); err != nil {
				return err
			}
			for _, sub := range []string{"boot", "usr/lib/modules", "usr/lib/systemd/boot/efi"} {
				parent := filepath.Join(dir, filepath.Dir(sub))
				if err := os.MkdirAll(parent, 0o755); err != nil {
					return err
				}
				if out, err := exec.Command("cp", "-a", filepath.Join(kernel.Root, sub), parent).CombinedOutput(); err != nil {
					return fmt.Errorf("copy %s: %v: %s", sub, err, out)
				}
			}
			return nil
		},
	}, dest)
	if err != nil {
		t.Fatalf("bootable tree: %v", err)
	}
	unit := `[Unit]
Description=ssbuild boot test: report the root mount, power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "SSBUILD-VM-BOOTED root: $(findmnt -n -o SOURCE,OPTIONS /)" >/dev/ttyS0'
ExecStartPost=/bin/systemctl --no-block poweroff
`
	must(t, os.WriteFile(filepath.Join(dest, "etc/systemd/system/ssbuild-boot-test.service"), []byte(unit), 0o644))
	wants := filepath.Join(dest, "etc/systemd/system/multi-user.target.wants")
	must(t, os.MkdirAll(wants, 0o755))
	must(t, os.Symlink("../ssbuild-boot-test.service", filepath.Join(wants, "ssbuild-boot-test.service")))
	return dest
}

// addBootFiles puts placeholder boot files into a small tree, for tests of
// the disk's structure; TestVMImage boots a real one.
func addBootFiles(t *testing.T, tree string) {
	t.Helper()
	for _, name := range []string{"usr/lib/systemd/boot/efi/systemd-bootx64.efi", "boot/vmlinuz-0.0-test", "boot/initrd.img-0.0-test"} {
		must(t, os.MkdirAll(filepath.Join(tree, filepath.Dir(name)), 0o755))
		must(t, os.WriteFile(filepath.Join(tree, name), []byte("placeholder "+name+"\n"), 0o644))
	}
}

// TestVMNeedsBootFiles: a tree without a kernel, its initrd or systemd-boot
// would give a disk that cannot boot. The build fails before writing
// anything, naming the package the recipe lacks.
func TestVMNeedsBootFiles(t *testing.T) {
	for _, c := range []struct {
		name    string
		missing string
		want    []string
	}{
		{"no kernel", "boot/vmlinuz-0.0-test", []string{"no kernel", "boot/vmlinuz-*", "linux-image-amd64", "linux-image-virtual"}},
		{"no initrd", "boot/initrd.img-0.0-test", []string{"boot/initrd.img-0.0-test", "initramfs-tools"}},
		{"no systemd-boot", "usr/lib/systemd/boot/efi/systemd-bootx64.efi", []string{"no systemd-boot", "systemd-boot-efi"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tree := filepath.Join(t.TempDir(), "tree")
			must(t, os.MkdirAll(filepath.Join(tree, "etc"), 0o755))
			addBootFiles(t, tree)
			must(t, os.Remove(filepath.Join(tree, c.missing)))
			dir := t.TempDir()
			spec := smallSpec(tree, filepath.Join(dir, "out"))
			spec.Architecture = "x86_64"
			spec.Formats = []lxdimage.Format{lxdimage.Container, lxdimage.VM}
			_, err := lxdimage.Build(context.Background(), spec)
			if err == nil {
				t.Fatal("a tree that cannot boot gave a VM image")
			}
			for _, want := range c.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			assertOnly(t, dir) // no output, not even the container image
		})
	}
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;=?]*[A-Za-z]`)

// mtype reads a file from a FAT image with mtools, as a user checks it.
func mtype(t *testing.T, img, name string) []byte {
	t.Helper()
	out, err := exec.Command("mtype", "-i", img, "::/"+name).Output()
	if err != nil {
		t.Fatalf("mtype %s from %s: %v", name, img, err)
	}
	return out
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
