package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// HostFiles are the per-host paths the installer chooses.
type HostFiles struct {
	StorageSource string  // the host's ZFS partition (or directory), e.g. /dev/disk/by-partlabel/ssbuild-zfs
	SecretFile    string  // where it writes the secret, 0600
	StateDir      string  // e.g. /var/lib/ssbuild
	Deploy        *Deploy // the host's deploy section; nil: none
}

// FromRecipe builds the appliance.yaml of one host from a recipe (what the
// installer writes). Every host needs a static address: joiners must know
// where the initiator is, and the initiator whom to expect. The result is
// checked as Load would check it.
func FromRecipe(r *recipes.Recipe, host string, files HostFiles) (*Appliance, error) {
	a := &Appliance{SecretFile: files.SecretFile, StateDir: files.StateDir, Deploy: files.Deploy}
	c := r.Cluster
	a.Cluster = Cluster{
		Name: c.Name, Initiator: c.Initiator, RegistrationPort: c.RegistrationPort,
		Storage: Storage{Pool: c.Storage.Pool, Driver: c.Storage.Driver, Source: files.StorageSource},
	}
	if a.Cluster.Name == "" {
		a.Cluster.Name = r.Name
	}
	var missing []string
	for _, h := range r.Installer.Hosts {
		addr, err := hostAddress(h)
		if errors.Is(err, errNoAddress) {
			missing = append(missing, h.Name)
		} else if err != nil {
			return nil, fmt.Errorf("appliance config for %s: %w", host, err)
		}
		a.Cluster.Members = append(a.Cluster.Members, Member{Name: h.Name, Address: addr})
		if h.Name == host {
			a.Host = Host{Name: h.Name, Address: addr}
		}
		if h.Name == c.Initiator {
			a.Cluster.InitiatorAddress = addr
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("appliance config for %s: hosts without a static address: %s (set installer.hosts[].address)", host, strings.Join(missing, ", "))
	}
	if a.Host.Name == "" {
		return nil, fmt.Errorf("appliance config: %q is not among the recipe's installer.hosts", host)
	}
	for _, n := range c.Networks {
		a.Cluster.Networks = append(a.Cluster.Networks, Network{Name: n.Name, Type: n.Type, IPv4: n.IPv4, Parent: n.Parent})
	}
	data, err := Marshal(a)
	if err != nil {
		return nil, err
	}
	checked, err := Parse("appliance.yaml for "+host, data)
	if err != nil {
		var inv *InvalidError
		if errors.As(err, &inv) {
			return nil, fmt.Errorf("appliance config from recipe %s: %w", r.File, err)
		}
		return nil, err
	}
	return checked, nil
}

var errNoAddress = errors.New("no static address")

// hostAddress is a host's static address, which every host needs (see
// FromRecipe).
func hostAddress(h recipes.Host) (string, error) {
	if h.Address == "" {
		return "", errNoAddress
	}
	p, err := netip.ParsePrefix(h.Address)
	if err != nil {
		return "", fmt.Errorf("host %s: address %q: %w", h.Name, h.Address, err)
	}
	return p.Addr().String(), nil
}

// CheckRecipe is a recipes.Check for what a build of the recipe's hosts
// would refuse here: a host without a static address (FromRecipe), at the
// host, and a cluster secret file the build would not take
// (CheckSecretFile), at its field. A missing or unreadable file is left to
// the recipe's own file check.
func CheckRecipe(r *recipes.Recipe, rep recipes.Reporter) {
	missing := false
	for i, h := range r.Installer.Hosts {
		if _, err := hostAddress(h); errors.Is(err, errNoAddress) {
			missing = true
			rep.At(fmt.Sprintf("installer.hosts[%d]", i), "host %s has no static address; every host needs one, the hosts find each other by them (address: 192.168.1.11/24)", h.Name)
		}
	}
	// The rest of an appliance config is the cluster's, the same for every
	// host: one host's shows what the installer would refuse (such as a
	// registrationPort that is the registry's port). Only on a recipe
	// found clean so far: most of its rules repeat the recipe's own.
	if hs := r.Installer.Hosts; !missing && len(hs) > 0 && rep.Found() == 0 {
		files := HostFiles{StorageSource: hostdisk.ZFSSource, SecretFile: hostdisk.SecretPath, StateDir: hostdisk.StateDir}
		var inv *InvalidError
		_, err := FromRecipe(r, hs[0].Name, files)
		switch {
		case errors.As(err, &inv):
			for _, p := range inv.Problems {
				rep.At("cluster", "the installer would refuse the hosts' appliance config: %s", p.Message)
			}
		case err != nil:
			rep.At("cluster", "the installer would refuse it: %v", err)
		}
	}
	if f := r.Cluster.Secret.File; f != "" {
		err := CheckSecretFile(r.Path(f))
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
			rep.At("cluster.secret.file", "%v", err)
		}
	}
}
