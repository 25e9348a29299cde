package install

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestInstall4KSectors installs onto a disk with 4096-byte logical
// sectors (4Kn NVMe), a loop device with --sector-size 4096, and checks it
// through the device the way a user would.
func TestInstall4KSectors(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "fsck.fat", "dd", "losetup")
	p, err := VerifyPayload(makePayload(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := sparseDisk(t, t.TempDir(), "target.img", 80*GiB)
	detachLoops(t, img)
	dev := run(t, "losetup", "-f", "--show", "--sector-size", "4096", img)
	plan := Plan{Target: dev, Layout: testLayout, Host: "nuc1", Files: testFiles}
	if err := Install(context.Background(), p, plan, Options{WorkDir: t.TempDir(), Progress: progress.New(testLog{t}, progress.Plain)}); err != nil {
		t.Fatal(err)
	}
	if v := run(t, "sgdisk", "-v", dev); !strings.Contains(v, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", v)
	}
	out := run(t, "sgdisk", "-p", dev)
	for _, want := range []string{"Sector size (logical/physical): 4096/4096", " 256       ", "EF00  ESP", "8300  ssbuild-os", "BF01  ssbuild-zfs"} {
		if !strings.Contains(out, want) {
			t.Errorf("sgdisk -p lacks %q:\n%s", want, out)
		}
	}
	if esp := blkidAt(t, dev, MiB, int64(testLayout.ESP)); esp["TYPE"] != "vfat" || esp["LABEL"] != hostdisk.FATLabelESP {
		t.Errorf("ESP: blkid %v", esp)
	}
	espImg := filepath.Join(t.TempDir(), "esp.img")
	run(t, "dd", "if="+dev, "of="+espImg, "bs=1M", "skip=1", fmt.Sprintf("count=%d", int64(testLayout.ESP)/MiB), "status=none")
	// mtools cannot read FAT with 4 KiB sectors; fsck.fat lists the files.
	if list := run(t, "fsck.fat", "-n", "-l", espImg); !strings.Contains(list, "/EFI/BOOT/BOOTX64.EFI") {
		t.Errorf("fsck.fat -l: no /EFI/BOOT/BOOTX64.EFI:\n%s", list)
	}
	run(t, "e2fsck", "-fn", fmt.Sprintf("%s?offset=%d", dev, MiB+int64(testLayout.ESP)))
}
