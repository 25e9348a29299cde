package lxdimage

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/filesystem"
)

// The ESP of the VM disk, filled from the tree:
//
//	EFI/BOOT/BOOTX64.EFI         systemd-boot (systemd-boot-efi), the removable-media path
//	                             OVMF boots without any boot entry in its NVRAM
//	loader/loader.conf           default entry, timeout 0 (no menu)
//	loader/entries/ssbuild.conf  kernel, initrd, root=PARTUUID=<root partition GUID>
//	vmlinuz-<version>            the tree's boot/vmlinuz-<version>
//	initrd.img-<version>         the tree's boot/initrd.img-<version>
const (
	systemdBootDir = "usr/lib/systemd/boot/efi"
	entryFile      = "loader/entries/ssbuild.conf"
)

// efiArch is UEFI's name for an architecture, in the file names of
// systemd-boot and of the removable-media boot path.
var efiArch = map[string]string{"x86_64": "x64", "aarch64": "aa64"}

// bootFiles are the tree's files a bootable ESP is made from.
type bootFiles struct {
	systemdBoot, kernel, initrd string // paths in the build machine's file system
	version                     string // the kernel's, e.g. 6.1.0-50-amd64
	arch                        string // UEFI's, e.g. x64
}

// findBootFiles finds the kernel, its initrd and systemd-boot in the tree,
// naming the package that provides what is missing: a disk without them
// would be written fine and never boot.
func findBootFiles(root, architecture string) (bootFiles, error) {
	arch, ok := efiArch[architecture]
	if !ok {
		return bootFiles{}, fmt.Errorf("vm: no UEFI boot for architecture %s (x86_64, aarch64)", architecture)
	}
	b := bootFiles{arch: arch, systemdBoot: filepath.Join(root, systemdBootDir, "systemd-boot"+arch+".efi")}
	if _, err := os.Stat(b.systemdBoot); err != nil {
		return b, fmt.Errorf("vm: no systemd-boot in the tree (%s/systemd-boot%s.efi): a VM image needs the package systemd-boot-efi in the recipe: %w",
			systemdBootDir, arch, err)
	}
	kernels, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return b, err
	}
	switch len(kernels) {
	case 0:
		return b, fmt.Errorf("vm: no kernel in the tree (boot/vmlinuz-*): a VM image needs a kernel package in the recipe (linux-image-amd64 on Debian, linux-image-virtual on Ubuntu)")
	case 1:
	default:
		// Which one boots must not depend on a guess; a fresh tree with
		// one kernel package installed has one.
		return b, fmt.Errorf("vm: %d kernels in the tree (%s): keep one", len(kernels), strings.Join(kernels, ", "))
	}
	b.kernel = kernels[0]
	b.version = strings.TrimPrefix(filepath.Base(b.kernel), "vmlinuz-")
	b.initrd = filepath.Join(root, "boot", "initrd.img-"+b.version)
	if _, err := os.Stat(b.initrd); err != nil {
		return b, fmt.Errorf("vm: kernel %s has no initrd in the tree (boot/initrd.img-%s; made by initramfs-tools when the kernel package is installed): %w",
			b.version, b.version, err)
	}
	return b, nil
}

// cmdline is the kernel command line. The root is found by its partition
// GUID, fixed per image, so neither the disk's bus (virtio-blk, virtio-scsi
// under LXD) nor the device name matters, and no initrd needs to know the
// ext4 UUID. Both consoles, as Ubuntu's cloud images have them: tty1 for
// LXD's VGA console, ttyS0 for `lxc console` and qemu's serial; the last
// one named gets /dev/console, where systemd writes its progress.
func cmdline(ids DiskIDs) string {
	return "root=PARTUUID=" + strings.ToLower(ids.RootPartition) + " rw console=tty1 console=ttyS0"
}

// espFile is one file of the ESP: copied from src, or data.
type espFile struct {
	name string
	src  string
	data string
}

func (b bootFiles) espFiles(ids DiskIDs, title string) []espFile {
	title = strings.Join(strings.Fields(title), " ") // one line
	kernel, initrd := "vmlinuz-"+b.version, "initrd.img-"+b.version
	entry := fmt.Sprintf("title %s\nlinux /%s\ninitrd /%s\noptions %s\n", title, kernel, initrd, cmdline(ids))
	return []espFile{
		{name: "EFI/BOOT/BOOT" + strings.ToUpper(b.arch) + ".EFI", src: b.systemdBoot},
		// timeout 0: straight to the entry (a key held at boot still shows
		// the menu).
		{name: "loader/loader.conf", data: "default ssbuild.conf\ntimeout 0\n"},
		{name: entryFile, data: entry},
		{name: kernel, src: b.kernel},
		{name: initrd, src: b.initrd},
	}
}

// writeESPFiles writes files into fs; call it inside gptimage.WithEpoch so
// their FAT times are the epoch.
func writeESPFiles(fs filesystem.FileSystem, files []espFile) error {
	for _, f := range files {
		if err := writeESPFile(fs, f); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

func writeESPFile(fs filesystem.FileSystem, f espFile) error {
	if dir := path.Dir("/" + f.name); dir != "/" {
		if err := fs.Mkdir(dir); err != nil {
			return err
		}
	}
	data := []byte(f.data)
	if f.src != "" {
		var err error
		if data, err = os.ReadFile(f.src); err != nil {
			return err
		}
	}
	out, err := fs.OpenFile("/"+f.name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	// One write: go-diskfs grows a FAT file's cluster chain per write.
	if _, err := out.Write(data); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
