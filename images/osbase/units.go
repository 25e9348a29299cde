package osbase

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// EnableUnit enables a systemd unit of the tree in root for target, the
// way `systemctl enable` would, without running systemd.
func EnableUnit(root *os.Root, unit, target string) error {
	wants := "etc/systemd/system/" + target + ".wants"
	if err := root.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	err := root.Symlink(unit, filepath.Join(wants, filepath.Base(unit)))
	if err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("enable %s: %w", filepath.Base(unit), err)
	}
	return nil
}

// DHCPNetworkFile is the systemd-networkd file that gives an instance
// without cloud-init an address on eth0 (cloud-init renders its own).
const DHCPNetworkFile = "/etc/systemd/network/20-ssbuild-eth0.network"

// DHCPNetwork is its content.
const DHCPNetwork = `# Written by ssbuild: an address for the instance's LXD NIC (eth0 in a container, en* in a VM).
[Match]
Name=eth0 en*

[Network]
DHCP=ipv4
`
