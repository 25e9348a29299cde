// Package modload owns the initramfs's module load order: images/initramfs
// writes LoadOrderFile next to modules.dep, and the init in the initramfs
// (appliance/install, and the tests' init) loads what it lists with Load.
package modload

import (
	"path"
	"strings"
)

// LoadOrderFile is written next to modules.dep: one module path per line
// (relative to lib/modules/<version>), dependencies before the modules
// that need them.
const LoadOrderFile = "modules.load"

// Name turns "kernel/fs/ext4/ext4.ko.xz" into "ext4" and "usb-storage"
// into "usb_storage": the kernel treats - and _ alike in module names.
func Name(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}
