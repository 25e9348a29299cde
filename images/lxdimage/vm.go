package lxdimage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/ext4image"
	"github.com/sovereign-stack/ssbuild/images/gptimage"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// The VM disk, disk.qcow2:
//
//	sector 0        protective MBR, GPT (fixed disk and partition GUIDs)
//	1 MiB           partition 1 "UEFI": ESP, FAT32 (go-diskfs, reproducible), 100 MiB:
//	                systemd-boot, loader config, the tree's kernel and initrd
//	101 MiB         partition 2 "rootfs": ext4 made by mkfs.ext4 -d from the tree
//	end             backup GPT
//
// The ESP boots the tree (esp.go): systemd-boot from systemd-boot-efi as
// EFI/BOOT/BOOTX64.EFI (the removable-media path OVMF tries without NVRAM
// entries), loader.conf with timeout 0, one entry with the tree's kernel
// and initrd (copied into the ESP) and root=PARTUUID=<root partition GUID>
// rw console=tty1 console=ttyS0. The GUID is fixed per image (name and
// epoch), so the command line is too; the root is mounted by the initrd
// from it, whatever the disk's bus or device name, and needs no fstab
// line. A tree without a kernel, its initrd or systemd-boot fails the
// build before any output, naming the package the recipe lacks
// (linux-image-amd64 / linux-image-virtual, systemd-boot-efi).
// Not done: secure boot (systemd-boot is not signed: metadata.yaml says
// requirements.secureboot=false, so LXD asks for security.secureboot=false
// instead of hanging in the firmware), the lxd-agent units from LXD's
// agent share, and kernel updates inside the VM do not reach the ESP (no
// kernel-install hook). LXD grows the disk to the instance's root size but not the
// partition: the image needs cloud-init's growpart (or an equivalent
// first-boot unit) to fill it; resize_inode lets ext4 grow online.
// LXD VMs cannot run on the build machines here (no vhost-vsock); the
// tests check the structure with sgdisk, blkid, e2fsck, fsck.fat, mtools
// and qemu-img, and boot the disk in qemu with OVMF (TCG) to systemd's
// multi-user.target.

// VMOptions shape the VM disk.
type VMOptions struct {
	// RootSize is the ext4 root partition's size in bytes; default: the
	// tree's size plus room for metadata and first boot.
	RootSize int64
}

const (
	mib         = int64(1) << 20
	sectorSize  = 512
	espStart    = mib
	espSize     = 100 * mib
	rootStart   = espStart + espSize
	gptReserved = mib // room for the backup GPT at the end
)

// DiskIDs are the fixed identifiers of a VM disk, derived from the image
// name and epoch so that rebuilds match and different images differ.
type DiskIDs struct {
	Disk          string `json:"disk_guid"`
	ESP           string `json:"esp_partition_guid"`
	RootPartition string `json:"root_partition_guid"`
	RootFS        string `json:"rootfs_uuid"`
	HashSeed      string `json:"rootfs_hash_seed"`
}

// diskIDs derives the identifiers of the disk for s.
func (s Spec) diskIDs() DiskIDs {
	id := func(role string) string {
		return gptimage.GUID(fmt.Sprintf("ssbuild lxd image %s %d %s", s.Properties.Name, s.Epoch, role))
	}
	return DiskIDs{Disk: id("disk"), ESP: id("esp"), RootPartition: id("root partition"),
		RootFS: strings.ToLower(id("rootfs")), HashSeed: strings.ToLower(id("hash seed"))}
}

func (s Spec) writeVMDisk(ctx context.Context, dir string) error {
	work, err := os.MkdirTemp(dir, ".vm-")
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(work)
	ids := s.diskIDs()
	boot, err := findBootFiles(s.RootFS, s.Architecture)
	if err != nil {
		return err
	}

	rootSize := s.VM.RootSize
	if rootSize == 0 {
		if rootSize, err = ext4image.SizeFor(s.RootFS); err != nil {
			return fmt.Errorf("vm: size of %s: %w", s.RootFS, err)
		}
	}
	rootSize = (rootSize + mib - 1) / mib * mib
	if s.VM.RootSize == 0 { // whole block groups (32768 blocks of 4 KiB), all usable
		rootSize = (rootSize + 128*mib - 1) / (128 * mib) * (128 * mib)
	}
	ext4 := filepath.Join(work, "rootfs.ext4")
	if err := ext4image.Make(ctx, ext4image.Spec{Root: s.RootFS, Output: ext4, Size: rootSize, Label: "rootfs",
		UUID: ids.RootFS, HashSeed: ids.HashSeed, Epoch: s.Epoch, WorkDir: work, Progress: s.Progress}); err != nil {
		return fmt.Errorf("vm: ext4: %w", err)
	}
	raw := filepath.Join(work, "disk.raw")
	if err := s.makeRawDisk(raw, ext4, rootSize, ids, boot); err != nil {
		return fmt.Errorf("vm: disk: %w", err)
	}
	if err := gptimage.FixFAT32(raw, espStart, espSize); err != nil {
		return fmt.Errorf("vm: ESP: %w", err)
	}
	if err := os.Remove(ext4); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if err := convertQcow2(ctx, s.Progress, raw, filepath.Join(dir, imagedir.DiskFile)); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	return nil
}

// makeRawDisk writes the GPT, the ESP with its boot files and the ext4
// image into a sparse raw disk image.
func (s Spec) makeRawDisk(path, ext4 string, rootSize int64, ids DiskIDs, boot bootFiles) (err error) {
	size := rootStart + rootSize + gptReserved
	d, err := diskfs.Create(path, size, diskfs.SectorSize512)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               ids.Disk,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: uint64(espStart / sectorSize), End: uint64((rootStart / sectorSize) - 1),
				Type: gpt.EFISystemPartition, Name: "UEFI", GUID: ids.ESP},
			{Index: 2, Start: uint64(rootStart / sectorSize), End: uint64((rootStart+rootSize)/sectorSize - 1),
				Type: gpt.LinuxFilesystem, Name: "rootfs", GUID: ids.RootPartition},
		},
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("partition table: %w", err)
	}
	esp, err := gptimage.CreateFAT32(d, 1, "UEFI", s.Epoch)
	if err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	title := s.Properties.Description
	if title == "" {
		title = s.Properties.Name
	}
	task := s.Progress.Start("ESP", 0, "")
	err = gptimage.WithEpoch(s.Epoch, func() error { return writeESPFiles(esp, boot.espFiles(ids, title)) })
	task.Done(err)
	if err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	f, err := os.Open(ext4)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := d.WritePartitionContents(2, f); err != nil {
		return fmt.Errorf("root partition: %w", err)
	}
	return nil
}

// convertQcow2 converts the raw disk to compressed qcow2, reporting
// qemu-img's percentage as bytes of the raw disk.
func convertQcow2(ctx context.Context, rep *progress.Reporter, raw, out string) error {
	info, err := os.Stat(raw)
	if err != nil {
		return err
	}
	task := rep.Start("qcow2", info.Size(), "bytes")
	_, err = command.Run(ctx, command.Cmd{Name: "qemu-img",
		Args:   []string{"convert", "-p", "-f", "raw", "-O", "qcow2", "-c", raw, out},
		Stdout: &qemuProgress{task: task, size: info.Size()}})
	task.Done(err)
	if err != nil {
		return fmt.Errorf("qcow2: %w", err)
	}
	return nil
}

// qemuProgress reads qemu-img -p's "    (45.00/100%)\r" lines.
type qemuProgress struct {
	task *progress.Task
	size int64
	line []byte
}

var qemuPercent = regexp.MustCompile(`\((\d+(?:\.\d+)?)/100%\)`)

func (q *qemuProgress) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != '\r' && b != '\n' {
			if len(q.line) < 256 {
				q.line = append(q.line, b)
			}
			continue
		}
		if m := qemuPercent.FindSubmatch(q.line); m != nil {
			pct, _ := strconv.ParseFloat(string(m[1]), 64)
			q.task.Set(int64(pct / 100 * float64(q.size)))
		}
		q.line = q.line[:0]
	}
	return len(p), nil
}
