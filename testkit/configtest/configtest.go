// Package configtest writes, for every host of a test bed, what the
// installer would: a fresh cluster secret (0600) and an appliance.yaml, read
// back the way the service reads it.
package configtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// What Write gives every host: the pool and network a recipe deployed on
// the bed must name.
const (
	BedPool    = "local"
	BedNetwork = "ssbr0"
)

// BedRecipe is a copy of r pointed at what the bed's hosts have (a dir pool
// BedPool, a bridge BedNetwork). The rest of its cluster section stays:
// a deploy reads only the storage and networks from it, and places
// instances on the members LXD has.
func BedRecipe(r *recipes.Recipe) *recipes.Recipe {
	c := *r
	c.Cluster.Storage.Pool, c.Cluster.Storage.Driver = BedPool, "dir"
	c.Cluster.Networks = []recipes.Network{{Name: BedNetwork, Type: "bridge"}}
	return &c
}

// Host is one bed host's appliance config as loaded, and where it is.
type Host struct {
	Bed    *testbed.Host
	Config *config.Appliance
	Path   string // its appliance.yaml
}

// ForBed makes the first host the initiator, gives every host a dir pool in
// its own directory, and returns the configs with the shared secret.
func ForBed(t testing.TB, bed *testbed.Bed) (hosts []Host, secret []byte) {
	t.Helper()
	hosts, secret, err := Write(bed)
	if err != nil {
		t.Fatal(err)
	}
	return hosts, secret
}

// Write is ForBed for programs (the demo): it returns its error.
func Write(bed *testbed.Bed) (hosts []Host, secret []byte, err error) {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return nil, nil, err
	}
	secret = []byte(hex.EncodeToString(raw))
	var members []config.Member
	for _, h := range bed.Hosts {
		members = append(members, config.Member{Name: h.Name, Address: h.Address.String()})
	}
	init := bed.Hosts[0]
	for _, h := range bed.Hosts {
		// The pool's source: on a real host the ZFS partition, here an
		// empty directory of the host's.
		if err := os.Mkdir(filepath.Join(h.Dir, "pool"), 0o711); err != nil {
			return nil, nil, err
		}
		secretFile := filepath.Join(h.Dir, "cluster.secret")
		if err := config.WriteSecret(secretFile, secret); err != nil {
			return nil, nil, err
		}
		a := &config.Appliance{
			Host: config.Host{Name: h.Name, Address: h.Address.String()},
			Cluster: config.Cluster{
				Name: "bed" + bed.ID, Initiator: init.Name, InitiatorAddress: init.Address.String(),
				Members:  members,
				Storage:  config.Storage{Pool: BedPool, Driver: "dir", Source: filepath.Join(h.Dir, "pool")},
				Networks: []config.Network{{Name: BedNetwork, Type: "bridge", IPv4: "10.222.0.1/24"}},
			},
			SecretFile: secretFile,
			StateDir:   filepath.Join(h.Dir, "state"),
		}
		data, err := config.Marshal(a)
		if err != nil {
			return nil, nil, err
		}
		path := filepath.Join(h.Dir, "appliance.yaml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return nil, nil, err
		}
		loaded, err := config.Load(path) // as the service will: defaults applied
		if err != nil {
			return nil, nil, err
		}
		hosts = append(hosts, Host{Bed: h, Config: loaded, Path: path})
	}
	return hosts, secret, nil
}
