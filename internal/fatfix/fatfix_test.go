package fatfix_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/sovereign-stack/ssbuild/internal/fatfix"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const mib = int64(1) << 20

// espImage writes an ESP-like FAT32 with go-diskfs (directories in the
// root, as EFI/ and loader/) on a disk of the given logical sector size,
// and returns the disk image and the file system's byte range. With 512-byte
// sectors the file system is a GPT partition, as the builds write it; with
// 4 KiB sectors it fills the image (go-diskfs v1.9.4 places a partition's
// file system at 512-byte LBAs on a 4Kn image file; on a 4Kn block device
// it does not, see appliance/install's TestInstall4KSectors).
func espImage(t *testing.T, sector int64) (img string, start, size int64) {
	t.Helper()
	img = filepath.Join(t.TempDir(), "disk.img")
	// 100 MiB: go-diskfs's FAT needs room for every cluster.
	d, err := diskfs.Create(img, 102*mib, diskfs.SectorSize(sector))
	if err != nil {
		t.Fatal(err)
	}
	part := 0
	start, size = 0, 102*mib
	if sector == 512 {
		part, start, size = 1, mib, 100*mib
		table := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
			Partitions: []*gpt.Partition{{Index: 1, Start: uint64(start / 512), End: uint64((start+size)/512 - 1),
				Type: gpt.EFISystemPartition, Name: "ESP"}}}
		if err := d.Partition(table); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: part, FSType: filesystem.TypeFat32, VolumeLabel: "ESP"})
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"/EFI/BOOT", "/loader/entries"} {
		if err := fs.Mkdir(dir); err != nil {
			t.Fatal(err)
		}
	}
	f, err := fs.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_CREATE|os.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("not really an EFI binary")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return img, start, size
}

// fsck runs fsck.fat -n, what a user checking an ESP runs, on the
// partition cut out as its own image.
func fsck(t *testing.T, img string, start, size int64) (string, error) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "esp.img")
	if err := os.WriteFile(p, b[start:start+size], 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("fsck.fat", "-n", p).CombinedOutput()
	return string(out), err
}

func repair(img string, start, size int64) error {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return fatfix.Repair(io.NewSectionReader(f, start, size), io.NewOffsetWriter(f, start), size)
}

// TestRepairMakesFsckClean: fsck.fat -n finds go-diskfs's FAT32 clean only
// after Repair, on 512-byte and 4 KiB sectors (4Kn disks exist among NVMe).
func TestRepairMakesFsckClean(t *testing.T) {
	testenv.RequireTools(t, "fsck.fat")
	for _, sector := range []int64{512, 4096} {
		t.Run(fmt.Sprintf("%d-byte sectors", sector), func(t *testing.T) {
			img, start, size := espImage(t, sector)
			if out, err := fsck(t, img, start, size); err == nil {
				t.Logf("go-diskfs's FAT32 is clean without the repair: fatfix may be obsolete\n%s", out)
			}
			if err := repair(img, start, size); err != nil {
				t.Fatal(err)
			}
			if out, err := fsck(t, img, start, size); err != nil {
				t.Errorf("fsck.fat -n after Repair: %v\n%s", err, out)
			}
		})
	}
}

// TestRepairRefusesWhatIsNotFAT32: a blank range and an ext4 file system are
// refused without a write.
func TestRepairRefusesWhatIsNotFAT32(t *testing.T) {
	testenv.RequireTools(t, "mkfs.ext4")
	ext4 := filepath.Join(t.TempDir(), "ext4.img")
	if err := os.WriteFile(ext4, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(ext4, 16*mib); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", ext4).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	blank := filepath.Join(t.TempDir(), "blank.img")
	if err := os.WriteFile(blank, make([]byte, mib), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, img := range map[string]string{"ext4": ext4, "blank": blank} {
		before, _ := os.ReadFile(img)
		info, _ := os.Stat(img)
		err := repair(img, 0, info.Size())
		if err == nil || !strings.Contains(err.Error(), "not a FAT32") {
			t.Errorf("%s: Repair = %v, want a not-FAT32 error", name, err)
		}
		if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
			t.Errorf("%s: Repair changed a file system it refused", name)
		}
	}
}
