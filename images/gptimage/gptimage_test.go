package gptimage_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/sovereign-stack/ssbuild/images/gptimage"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

func TestGUIDIsStablePerSeed(t *testing.T) {
	a, b := gptimage.GUID("image one disk"), gptimage.GUID("image two disk")
	if a != gptimage.GUID("image one disk") {
		t.Error("the same seed gave two GUIDs")
	}
	if a == b {
		t.Error("two seeds gave the same GUID")
	}
	// Version 4, RFC 4122 variant, upper case as go-diskfs writes them.
	if !regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`).MatchString(a) {
		t.Errorf("GUID %s is not a version 4 GUID", a)
	}
}

// TestFixFAT32 writes an ESP-like FAT32 with go-diskfs (directories in the
// root, as EFI/ and loader/) and checks that fsck.fat -n, which a user runs,
// finds it clean only after FixFAT32.
func TestFixFAT32(t *testing.T) {
	testenv.RequireTools(t, "fsck.fat")
	const mib = int64(1) << 20 // the ESP: 100 MiB, as the VM disk's (go-diskfs's FAT needs room for every cluster)
	img := filepath.Join(t.TempDir(), "disk.img")
	d, err := diskfs.Create(img, 102*mib, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	table := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
		Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: 2048 + 100*2048 - 1, Type: gpt.EFISystemPartition, Name: "ESP"}}}
	if err := d.Partition(table); err != nil {
		t.Fatal(err)
	}
	fs, err := gptimage.CreateFAT32(d, 1, "ESP", 1_700_000_000)
	if err != nil {
		t.Fatal(err)
	}
	err = gptimage.WithEpoch(1_700_000_000, func() error {
		if err := fs.Mkdir("/EFI/BOOT"); err != nil {
			return err
		}
		f, err := fs.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_CREATE|os.O_RDWR)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte("not really an EFI binary")); err != nil {
			return err
		}
		return f.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	esp := func() string { // the partition as its own image, for fsck.fat
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "esp.img")
		if err := os.WriteFile(p, b[mib:101*mib], 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if out, err := exec.Command("fsck.fat", "-n", esp()).CombinedOutput(); err == nil {
		t.Logf("go-diskfs's FAT32 is clean without the fix: FixFAT32 may be obsolete\n%s", out)
	}
	if err := gptimage.FixFAT32(img, mib, 100*mib); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsck.fat", "-n", esp()).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n after FixFAT32: %v\n%s", err, out)
	}
}
