package osbase

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteFile writes an absolute path of the tree in root with perm (also on
// a file that existed with other bits), making its parents 0755. Through
// an os.Root, so a symlink in an untrusted tree cannot lead it outside.
func WriteFile(root *os.Root, name string, data []byte, perm os.FileMode) error {
	name = strings.TrimPrefix(name, "/")
	if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return fmt.Errorf("write /%s: %w", name, err)
	}
	if err := root.WriteFile(name, data, perm); err != nil {
		return fmt.Errorf("write /%s: %w", name, err)
	}
	if err := root.Chmod(name, perm); err != nil {
		return fmt.Errorf("write /%s: %w", name, err)
	}
	return nil
}

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

// NetworkdNoUdevFile is a drop-in for systemd-networkd in images without
// udev. networkd configures a link only once udev has initialised it,
// whenever /sys is writable, and LXD's security.nesting (which Docker in
// an instance needs) mounts it writable: without udev, eth0 would wait for
// ever and get no address. A read-only /sys in networkd's own mount
// namespace is how networkd learns that udev is absent.
const NetworkdNoUdevFile = "/etc/systemd/system/systemd-networkd.service.d/ssbuild-no-udev.conf"

// NetworkdNoUdev is its content.
const NetworkdNoUdev = `# Written by ssbuild: this image has no udev, so networkd must not wait for it.
[Service]
ReadOnlyPaths=/sys
`
