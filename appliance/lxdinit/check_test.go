package lxdinit

import (
	"strings"
	"testing"

	"github.com/canonical/lxd/shared/api"
)

// The checks that run before any change: each bad input is refused with a
// message naming the field, and a good one passes.
func TestCheck(t *testing.T) {
	server := &api.Server{Environment: api.ServerEnvironment{
		StorageSupportedDrivers: []api.ServerStorageDriverInfo{{Name: "dir"}, {Name: "zfs"}},
	}}
	good := Config{
		HTTPSAddress: "10.0.0.11:8443",
		Pool:         StoragePool{Name: "local", Driver: "zfs", Source: "/dev/disk/by-partlabel/ssbuild-zfs"},
		Network:      Network{Name: "lxdbr0", IPv4Address: "10.10.0.1/24"},
	}
	if err := check(withDefaults(good), server); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"address without port", func(c *Config) { c.HTTPSAddress = "10.0.0.11" }, `https address "10.0.0.11": want host:port`},
		{"no pool name", func(c *Config) { c.Pool.Name = "" }, "storage pool: no name"},
		{"unknown driver", func(c *Config) { c.Pool.Driver = "btrfs" }, `driver "btrfs" is not supported by this LXD (supported: dir, zfs)`},
		{"no network name", func(c *Config) { c.Network.Name = "" }, "network: no name"},
		{"not a CIDR", func(c *Config) { c.Network.IPv4Address = "10.10.0.1" }, `ipv4.address "10.10.0.1": want CIDR`},
		{"empty ipv4", func(c *Config) { c.Network.IPv4Address = "" }, `ipv4.address "": want CIDR`},
		{"v6 where v4 goes", func(c *Config) { c.Network.IPv4Address = "fd00::1/64" }, "wrong address family"},
		{"v4 where v6 goes", func(c *Config) { c.Network.IPv6Address = "10.1.0.1/24" }, `ipv6.address "10.1.0.1/24": wrong address family`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			err := check(withDefaults(cfg), server)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}
