package initramfs_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/initramfs"
	"github.com/sovereign-stack/ssbuild/testkit/kerneltest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const epoch = 1700000000

// listCpio lists a (possibly gzip-compressed) archive with the given tool,
// e.g. "cpio -it" or "bsdcpio -it".
func listCpio(t *testing.T, archive string, tool ...string) []string {
	t.Helper()
	testenv.RequireTools(t, tool[0])
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(tool[0], tool[1:]...)
	cmd.Stdin = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v: %s", tool, err, stderr.String())
	}
	return strings.Fields(string(out))
}

func TestArchiveReadByCpioTools(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := initramfs.NewArchive(epoch)
	for _, err := range []error{
		a.AddFile("/init", src, 0o755),
		a.AddData("etc/motd", []byte("hello\n"), 0o644),
		a.AddSymlink("bin/sh", "../init"),
		a.AddCharDev("dev/console", 0o600, 5, 1),
		a.AddDir("tmp", 0o777|os.ModeSticky),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	archive := filepath.Join(dir, "a.cpio")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	want := []string{"bin", "bin/sh", "dev", "dev/console", "etc", "etc/motd", "init", "tmp"}
	for _, tool := range [][]string{{"cpio", "-it", "--quiet"}, {"bsdcpio", "-it", "--quiet"}} {
		if got := listCpio(t, archive, tool...); !slices.Equal(got, want) {
			t.Errorf("%s lists %q, want %q (parents added, sorted)", tool[0], got, want)
		}
	}
	// Verbose listing: owners, modes, the fixed mtime, the device numbers.
	testenv.RequireTools(t, "cpio")
	cmd := exec.Command("cpio", "-itv", "--quiet", "-F", archive)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"-rwxr-xr-x   1 root     root           18 Nov 14  2023 init",
		"lrwxrwxrwx   1 root     root            7 Nov 14  2023 bin/sh -> ../init",
		"crw-------   1 root     root       5,   1 Nov 14  2023 dev/console",
		"drwxrwxrwt   2 root     root            0 Nov 14  2023 tmp",
	} {
		if !strings.Contains(string(out), line) {
			t.Errorf("cpio -itv lacks %q:\n%s", line, out)
		}
	}
	// Extracted contents are the bytes given.
	x := t.TempDir()
	cmd = exec.Command("cpio", "-id", "--quiet", "-F", archive)
	cmd.Dir = x
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v: %s", err, b)
	}
	if b, _ := os.ReadFile(filepath.Join(x, "etc/motd")); string(b) != "hello\n" {
		t.Errorf("etc/motd extracted as %q", b)
	}
}

func TestAddRefusesFileUnderFile(t *testing.T) {
	a := initramfs.NewArchive(epoch)
	if err := a.AddData("init", []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.AddData("init/x", nil, 0o644); err == nil {
		t.Error("a file under the file init was accepted")
	}
}

// fakeKernel writes a lib/modules tree with depmod-style indexes.
func fakeKernel(t *testing.T, dep, softdep, alias, builtin string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules/6.1.0-test")
	for name, content := range map[string]string{"modules.dep": dep, "modules.softdep": softdep,
		"modules.alias": alias, "modules.builtin": builtin} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, line := range strings.Split(dep, "\n") {
		if mod, _, ok := strings.Cut(line, ":"); ok {
			p := filepath.Join(dir, mod)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("module "+mod), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func TestModulesResolvedInLoadOrder(t *testing.T) {
	root := fakeKernel(t,
		"kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"+
			"kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n"+
			"kernel/crypto/crc32c_generic.ko:\n"+
			"kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/scsi_mod.ko\n"+
			"kernel/drivers/scsi/scsi_mod.ko:\nkernel/drivers/unused.ko:\n",
		"softdep ext4 pre: crc32c\nsoftdep usb_storage pre: not_present\n",
		"alias crc32c crc32c_generic\nalias pci:v*d* unused\n",
		"kernel/fs/vfat/vfat.ko\n")
	init := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(init, []byte("init"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := initramfs.Spec{Init: init, Root: root, Modules: []string{"usb-storage", "ext4", "vfat"}, Epoch: epoch}
	_, res, err := spec.Archive()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/crypto/crc32c_generic.ko", "kernel/lib/crc16.ko", "kernel/fs/mbcache.ko",
		"kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko",
		"kernel/drivers/scsi/scsi_mod.ko", "kernel/drivers/usb/storage/usb-storage.ko"}
	if !slices.Equal(res.Modules, want) {
		t.Errorf("load order %q, want %q", res.Modules, want)
	}
	if !slices.Equal(res.Builtin, []string{"vfat"}) {
		t.Errorf("builtin %q, want vfat", res.Builtin)
	}
	spec.Modules = []string{"ext4", "nvme"}
	if _, _, err := spec.Archive(); err == nil || !strings.Contains(err.Error(), "module nvme") {
		t.Errorf("a module the kernel lacks: err %v, want one naming nvme", err)
	}
	// Optional modules (the NIC drivers): included with their
	// dependencies when the kernel has them, named in Skipped when not.
	spec.Modules = []string{"vfat"}
	spec.OptionalModules = []string{"igc", "usb_storage"}
	_, res, err = spec.Archive()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"kernel/drivers/scsi/scsi_mod.ko", "kernel/drivers/usb/storage/usb-storage.ko"}; !slices.Equal(res.Modules, want) ||
		!slices.Equal(res.Skipped, []string{"igc"}) {
		t.Errorf("optional: modules %q skipped %q, want %q and igc", res.Modules, res.Skipped, want)
	}
}

// TestDebianKernel builds the installer-style initramfs for Debian 12's
// kernel and boots it in qemu.
func TestDebianKernel(t *testing.T) {
	k := kerneltest.Get(t)
	initBin := kerneltest.TestInit(t)
	dir := t.TempDir()
	spec := initramfs.Spec{Init: initBin, Root: k.Root, OptionalModules: initramfs.NICModules, Epoch: epoch}
	ctx := context.Background()
	first := filepath.Join(dir, "initrd.img")
	start := time.Now()
	res, err := initramfs.Build(ctx, spec, first)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: %d modules, %d bytes, built in %v", len(res.Modules), res.Size, time.Since(start).Round(time.Millisecond))
	if len(res.Skipped) > 0 {
		t.Errorf("Debian's kernel lacks NIC drivers %v", res.Skipped)
	}

	t.Run("reproducible", func(t *testing.T) {
		second := filepath.Join(dir, "again.img")
		res2, err := initramfs.Build(ctx, spec, second)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := os.ReadFile(first)
		b, _ := os.ReadFile(second)
		if !bytes.Equal(a, b) || res.SHA256 != res2.SHA256 {
			t.Errorf("two builds differ: %s vs %s", res.SHA256, res2.SHA256)
		}
	})

	t.Run("contents", func(t *testing.T) {
		testenv.RequireTools(t, "sh", "zcat", "cpio")
		out, err := exec.Command("sh", "-c", "zcat "+first+" | cpio -it --quiet").Output()
		if err != nil {
			t.Fatal(err)
		}
		names := strings.Fields(string(out))
		modDir := "lib/modules/" + k.Version + "/"
		for _, want := range []string{"init", "dev/console", modDir + "modules.dep", modDir + "modules.load",
			modDir + "modules.alias", modDir + "modules.softdep", modDir + "modules.builtin"} {
			if !slices.Contains(names, want) {
				t.Errorf("archive lacks %s", want)
			}
		}
		// The drivers asked for and the dependencies they cannot load
		// without, by file name.
		for _, mod := range []string{"nvme.ko", "nvme-core.ko", "ahci.ko", "libahci.ko", "libata.ko", "sd_mod.ko",
			"scsi_mod.ko", "virtio_blk.ko", "xhci-pci.ko", "xhci-hcd.ko", "ehci-pci.ko", "ehci-hcd.ko",
			"usb-storage.ko", "uas.ko", "usbcore.ko", "ext4.ko", "jbd2.ko", "mbcache.ko", "vfat.ko", "fat.ko",
			"squashfs.ko", "nls_cp437.ko",
			"virtio_net.ko", "e1000.ko", "e1000e.ko", "igb.ko", "igc.ko", "r8169.ko", "r8152.ko"} {
			if !slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, "/"+mod) }) {
				t.Errorf("archive lacks module %s", mod)
			}
		}
		var modules int
		for _, n := range names {
			if strings.HasSuffix(n, ".ko") {
				modules++
			}
		}
		if modules != len(res.Modules) {
			t.Errorf("archive holds %d modules, Result lists %d", modules, len(res.Modules))
		}
	})

	t.Run("boots in qemu", func(t *testing.T) {
		// One disk per kind of controller the installer must drive:
		// virtio, NVMe, and SATA on q35's AHCI controller.
		disk := func(name string) string {
			p := filepath.Join(t.TempDir(), name)
			if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}
		serial, exited := kerneltest.RunQEMU(t, 3*time.Minute,
			"-kernel", k.Vmlinuz(), "-initrd", first,
			"-append", "console=ttyS0 panic=-1 ssbuild.expect=vda,nvme0n1,sda",
			"-drive", "if=virtio,format=raw,file="+disk("virtio.raw"),
			"-drive", "if=none,id=nvme,format=raw,file="+disk("nvme.raw"),
			"-device", "nvme,drive=nvme,serial=ssbuild-test",
			"-drive", "if=none,id=sata,format=raw,file="+disk("sata.raw"),
			"-device", "ide-hd,drive=sata,bus=ide.0")
		for _, l := range kerneltest.Lines(serial, "testinit:") {
			t.Log("guest: " + l)
		}
		if !strings.Contains(serial, kerneltest.InitMarker+" kernel="+k.Version) {
			t.Fatalf("the guest never printed %s from our init; serial console:\n%s", kerneltest.InitMarker, serial)
		}
		if got := kerneltest.Lines(serial, "testinit: modules loaded:"); len(got) != 1 ||
			!strings.Contains(got[0], "loaded: "+itoa(len(res.Modules))+" ") {
			t.Errorf("want all %d modules loaded, the guest said %q", len(res.Modules), got)
		}
		if errs := kerneltest.Lines(serial, "module errors"); len(errs) > 0 {
			t.Errorf("module errors: %q", errs)
		}
		got := kerneltest.Lines(serial, "testinit: block devices:")
		if len(got) != 1 {
			t.Fatalf("block device lines: %q", got)
		}
		for _, d := range []string{"vda", "nvme0n1", "sda"} {
			if !slices.Contains(strings.Fields(got[0]), d) {
				t.Errorf("the guest did not see %s: %q", d, got[0])
			}
		}
		if !exited {
			t.Errorf("the guest did not power off; serial console:\n%s", serial)
		}
	})
}

func itoa(n int) string { return strconv.Itoa(n) }
