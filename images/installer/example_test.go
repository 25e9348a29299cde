package installer_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sovereign-stack/ssbuild/images/initramfs"
	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// What `ssbuild installer` does with an OS root filesystem that has
// linux-image-amd64 and systemd-boot-efi installed: the installer
// initramfs with the (static) ssbuild binary as /init, then the image.
func Example() {
	ctx := context.Background()
	rep := progress.ForFile(os.Stderr, false)
	osRoot := "/var/tmp/ssbuild-work/host-rootfs"
	out := "/var/tmp/ssbuild-out"

	initrd := filepath.Join(out, "installer-initrd.img")
	ird, err := initramfs.Build(ctx, initramfs.Spec{
		Init: "/usr/local/bin/ssbuild", Root: osRoot, Epoch: 1700000000, Progress: rep,
	}, initrd)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	res, err := installer.Build(ctx, installer.Spec{
		Name:        "demo",
		Epoch:       1700000000,
		Kernel:      filepath.Join(osRoot, "boot", "vmlinuz-"+ird.KernelVersion),
		Initramfs:   initrd,
		SystemdBoot: filepath.Join(osRoot, "usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
		Payload: []installer.PayloadFile{
			{Name: "os.img", Path: "/var/tmp/ssbuild-work/os.ext4"},
			{Name: "base-image", Path: "/var/tmp/ssbuild-work/base-image"},
			{Name: "recipe.yaml", Path: "recipe.yaml"},
			{Name: "appliance.yaml", Path: "/var/tmp/ssbuild-work/appliance.yaml"},
		},
		Output:   filepath.Join(out, "installer.img"),
		Progress: rep,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println(res.SHA256)
}
