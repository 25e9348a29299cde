// Package hostdisk owns what the installer leaves on an installed host for
// its first boot: the partitions' names (the first boot and fstab find them
// by /dev/disk/by-partlabel/...) and the paths in the installed OS.
// appliance/install writes them, images/hostos builds the OS that reads
// them, and the first boot (appliance/service) reads them.
package hostdisk

import (
	"fmt"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// GPT partition names of the installed disk, and the ESP's FAT label.
const (
	LabelESP    = "ESP"
	LabelOS     = "ssbuild-os" // also the ext4 label of os.img
	LabelZFS    = "ssbuild-zfs"
	FATLabelESP = "ESP"
)

// Where the installed OS finds what the installer wrote.
const (
	SecretPath  = "/etc/ssbuild/cluster.secret" // 0600
	StateDir    = "/var/lib/ssbuild"
	ZFSSource   = "/dev/disk/by-partlabel/" + LabelZFS
	NetworkFile = "/etc/systemd/network/10-ssbuild.network" // static address, when the recipe gives one
)

// FitOS is the rule the build (at os.img's making) and the installer (at
// the target's OS partition) both apply: the OS image must fit.
func FitOS(image, partition int64) error {
	if image > partition {
		return fmt.Errorf("OS image of %s does not fit the OS partition of %s; raise installer.layout.os or install fewer packages",
			recipes.Size(image), recipes.Size(partition))
	}
	return nil
}
