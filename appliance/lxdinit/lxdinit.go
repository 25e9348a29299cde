// Package lxdinit initialises one host's LXD through its API: the HTTPS
// address, the storage pool, the bridge network and the profile that ties
// instances to both. Each step reads the current state first and changes
// only what differs, so running Apply again after a crash at any point
// converges instead of failing on what the first run already did.
//
// It runs on the initiator's standalone server, before it bootstraps a
// cluster (or, re-installed, joins one: initialised this way it joins
// fine); the other hosts leave all this to their join, which brings the
// cluster's pool, network and profiles. A re-run on a cluster member finds
// everything in place. Creating a pool or network on
// a cluster (pending per member) is the cluster step's job, not this one's.
package lxdinit

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"
)

// Config is the LXD set-up of one host.
type Config struct {
	// HTTPSAddress is core.https_address, e.g. "10.0.0.11:8443". Empty
	// leaves the server's address alone.
	HTTPSAddress string
	Pool         StoragePool
	Network      Network
	// Profile is the profile whose root disk and eth0 point at Pool and
	// Network (default "default"); created when missing.
	Profile string
}

// StoragePool describes the pool instances live on.
type StoragePool struct {
	Name   string // e.g. "local"
	Driver string // zfs on the host's ZFS partition; dir or btrfs in tests
	// Source is the block device or directory for the pool (the ZFS
	// partition). Empty lets LXD choose (a directory or a loop file).
	Source string
	// Config holds further driver keys (size, zfs.pool_name, ...).
	Config map[string]string
}

// Network describes the bridge instances attach to.
type Network struct {
	Name        string // e.g. "lxdbr0"
	IPv4Address string // the bridge's address in CIDR form, or "auto"
	IPv6Address string // CIDR, "auto" or "none" (the default)
}

// Action is what a step did.
type Action string

const (
	Created Action = "created"
	Updated Action = "updated"
	InPlace Action = "already in place"
)

// Step names, in the order Apply runs them.
const (
	StepHTTPSAddress = "https address"
	StepStoragePool  = "storage pool"
	StepNetwork      = "network"
	StepProfile      = "profile"
)

// Step is the outcome of one step of Apply.
type Step struct {
	Name   string // one of the Step* names
	Action Action
	Detail string // what the step is about, e.g. `storage pool "local" (dir)`
}

func (s Step) String() string { return fmt.Sprintf("%s: %s", s.Detail, s.Action) }

// Apply brings the server to cfg one step at a time and returns what each
// step did. It checks cfg against the server before changing anything, so
// a config the server cannot take leaves it untouched. On error, the steps
// done so far are returned with it.
func Apply(ctx context.Context, c lxd.InstanceServer, cfg Config) ([]Step, error) {
	cfg = withDefaults(cfg)
	server, _, err := c.GetServer()
	if err != nil {
		return nil, fmt.Errorf("lxd init: read server: %w", err)
	}
	if err := check(cfg, server); err != nil {
		return nil, fmt.Errorf("lxd init: %w", err)
	}
	steps := []func(lxd.InstanceServer, Config) (Step, error){
		setHTTPSAddress, ensureStoragePool, ensureNetwork, ensureProfile,
	}
	var done []Step
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return done, fmt.Errorf("lxd init: %w", err)
		}
		s, err := step(c, cfg)
		if err != nil {
			return done, fmt.Errorf("lxd init: %w", err)
		}
		done = append(done, s)
	}
	return done, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Profile == "" {
		cfg.Profile = "default"
	}
	if cfg.Network.IPv6Address == "" {
		cfg.Network.IPv6Address = "none"
	}
	return cfg
}

// check refuses a config the server cannot take before anything changes.
func check(cfg Config, server *api.Server) error {
	var errs []error
	if cfg.HTTPSAddress != "" {
		if _, _, err := net.SplitHostPort(cfg.HTTPSAddress); err != nil {
			errs = append(errs, fmt.Errorf("https address %q: want host:port: %w", cfg.HTTPSAddress, err))
		}
	}
	if cfg.Pool.Name == "" {
		errs = append(errs, errors.New("storage pool: no name"))
	}
	var supported []string
	for _, d := range server.Environment.StorageSupportedDrivers {
		supported = append(supported, d.Name)
	}
	if !slices.Contains(supported, cfg.Pool.Driver) {
		errs = append(errs, fmt.Errorf("storage pool %q: driver %q is not supported by this LXD (supported: %s)",
			cfg.Pool.Name, cfg.Pool.Driver, strings.Join(supported, ", ")))
	}
	if cfg.Network.Name == "" {
		errs = append(errs, errors.New("network: no name"))
	}
	for _, a := range []struct {
		key, value string
		v4         bool
	}{{"ipv4.address", cfg.Network.IPv4Address, true}, {"ipv6.address", cfg.Network.IPv6Address, false}} {
		if err := checkAddress(a.value, a.v4); err != nil {
			errs = append(errs, fmt.Errorf("network %q: %s %q: %w", cfg.Network.Name, a.key, a.value, err))
		}
	}
	return errors.Join(errs...)
}

func checkAddress(v string, v4 bool) error {
	if v == "auto" || v == "none" {
		return nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return errors.New(`want CIDR (address/length), "auto" or "none"`)
	}
	if p.Addr().Is4() != v4 {
		return errors.New("wrong address family")
	}
	return nil
}

func notFound(err error) bool { return api.StatusErrorCheck(err, http.StatusNotFound) }

func setHTTPSAddress(c lxd.InstanceServer, cfg Config) (Step, error) {
	s := Step{Name: StepHTTPSAddress, Detail: fmt.Sprintf("core.https_address %s", cfg.HTTPSAddress)}
	if cfg.HTTPSAddress == "" {
		s.Detail, s.Action = "core.https_address (not asked for)", InPlace
		return s, nil
	}
	server, etag, err := c.GetServer()
	if err != nil {
		return s, fmt.Errorf("read server config: %w", err)
	}
	if server.Config["core.https_address"] == cfg.HTTPSAddress {
		s.Action = InPlace
		return s, nil
	}
	put := server.Writable()
	if put.Config == nil {
		put.Config = map[string]any{}
	}
	put.Config["core.https_address"] = cfg.HTTPSAddress
	if err := c.UpdateServer(put, etag); err != nil {
		return s, fmt.Errorf("set core.https_address to %s: %w", cfg.HTTPSAddress, err)
	}
	s.Action = Updated
	return s, nil
}

func ensureStoragePool(c lxd.InstanceServer, cfg Config) (Step, error) {
	p := cfg.Pool
	s := Step{Name: StepStoragePool, Detail: fmt.Sprintf("storage pool %q (%s)", p.Name, p.Driver)}
	want := maps.Clone(p.Config)
	if want == nil {
		want = map[string]string{}
	}
	if p.Source != "" {
		want["source"] = p.Source
	}
	pool, etag, err := c.GetStoragePool(p.Name)
	if notFound(err) {
		err := c.CreateStoragePool(api.StoragePoolsPost{Name: p.Name, Driver: p.Driver,
			StoragePoolPut: api.StoragePoolPut{Config: want}})
		if err != nil {
			return s, fmt.Errorf("create storage pool %q (driver %s): %w", p.Name, p.Driver, err)
		}
		s.Action = Created
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read storage pool %q: %w", p.Name, err)
	}
	// What LXD cannot change on an existing pool is an error for a person:
	// the pool holds data.
	if pool.Driver != p.Driver {
		return s, fmt.Errorf("storage pool %q exists with driver %s, want %s: LXD cannot change a pool's driver (delete the pool or change the config)",
			p.Name, pool.Driver, p.Driver)
	}
	if p.Source != "" && pool.Config["source"] != p.Source && !zfsPoolOnDevice(pool, p.Source) {
		return s, fmt.Errorf("storage pool %q exists on source %q, want %q: LXD cannot move a pool", p.Name, pool.Config["source"], p.Source)
	}
	if pool.Status != "" && pool.Status != api.StoragePoolStatusCreated {
		return s, fmt.Errorf("storage pool %q exists in state %s, want %s", p.Name, pool.Status, api.StoragePoolStatusCreated)
	}
	changed := differing(pool.Config, p.Config)
	if len(changed) == 0 {
		s.Action = InPlace
		return s, nil
	}
	put := pool.Writable()
	maps.Copy(put.Config, p.Config)
	if err := c.UpdateStoragePool(p.Name, put, etag); err != nil {
		return s, fmt.Errorf("update storage pool %q (%s): %w", p.Name, strings.Join(changed, ", "), err)
	}
	s.Action = Updated
	return s, nil
}

// zfsPoolOnDevice reports whether pool is a ZFS pool LXD made on the
// block device source: LXD then records the zpool's name as the pool's
// source, not the device (seen on the installed host's second start).
func zfsPoolOnDevice(pool *api.StoragePool, source string) bool {
	return pool.Driver == "zfs" && strings.HasPrefix(source, "/dev/") &&
		pool.Config["source"] != "" && pool.Config["source"] == pool.Config["zfs.pool_name"]
}

// differing lists the keys of want whose value in have differs, sorted.
func differing(have, want map[string]string) []string {
	var keys []string
	for k, v := range want {
		if have[k] != v {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func ensureNetwork(c lxd.InstanceServer, cfg Config) (Step, error) {
	n := cfg.Network
	s := Step{Name: StepNetwork, Detail: fmt.Sprintf("network %q (bridge, ipv4 %s, ipv6 %s)", n.Name, n.IPv4Address, n.IPv6Address)}
	want := map[string]string{"ipv4.address": n.IPv4Address, "ipv6.address": n.IPv6Address}
	network, etag, err := c.GetNetwork(n.Name)
	if err == nil && !network.Managed {
		// LXD also answers for the host's own interfaces.
		return s, fmt.Errorf("network %q: the host has an interface of that name (%s) that LXD does not manage", n.Name, network.Type)
	}
	if notFound(err) {
		err := c.CreateNetwork(api.NetworksPost{Name: n.Name, Type: "bridge",
			NetworkPut: api.NetworkPut{Config: want}})
		if err != nil {
			return s, fmt.Errorf("create network %q (bridge): %w", n.Name, err)
		}
		s.Action = Created
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read network %q: %w", n.Name, err)
	}
	if network.Type != "bridge" {
		return s, fmt.Errorf("network %q exists with type %s, want bridge", n.Name, network.Type)
	}
	put := network.Writable()
	var changed []string
	for _, key := range []string{"ipv4.address", "ipv6.address"} {
		have, w := network.Config[key], want[key]
		// "auto" is resolved to a subnet when the network is created: any
		// subnet satisfies it.
		if have == w || (w == "auto" && have != "" && have != "none") {
			continue
		}
		put.Config[key] = w
		changed = append(changed, fmt.Sprintf("%s %q -> %q", key, have, w))
	}
	if len(changed) == 0 {
		s.Action = InPlace
		return s, nil
	}
	if err := c.UpdateNetwork(n.Name, put, etag); err != nil {
		return s, fmt.Errorf("update network %q (%s): %w", n.Name, strings.Join(changed, ", "), err)
	}
	s.Action = Updated
	return s, nil
}

// profileDevices are the devices the profile must have.
func profileDevices(cfg Config) map[string]map[string]string {
	return map[string]map[string]string{
		"root": {"type": "disk", "path": "/", "pool": cfg.Pool.Name},
		"eth0": {"type": "nic", "name": "eth0", "network": cfg.Network.Name},
	}
}

func ensureProfile(c lxd.InstanceServer, cfg Config) (Step, error) {
	s := Step{Name: StepProfile, Detail: fmt.Sprintf("profile %q (root on %q, eth0 on %q)", cfg.Profile, cfg.Pool.Name, cfg.Network.Name)}
	want := profileDevices(cfg)
	profile, etag, err := c.GetProfile(cfg.Profile)
	if notFound(err) {
		err := c.CreateProfile(api.ProfilesPost{Name: cfg.Profile, ProfilePut: api.ProfilePut{
			Description: "Instances on the appliance's storage pool and network", Devices: want}})
		if err != nil {
			return s, fmt.Errorf("create profile %q: %w", cfg.Profile, err)
		}
		s.Action = Created
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read profile %q: %w", cfg.Profile, err)
	}
	put := profile.Writable()
	if put.Devices == nil {
		put.Devices = map[string]map[string]string{}
	}
	var changed []string
	for name, dev := range want {
		// A device that has every wanted key stays, with keys of its own
		// (a root size, say); anything else is replaced whole, so no stale
		// key (an old-style nictype/parent) contradicts the new ones.
		if have, ok := put.Devices[name]; ok && len(differing(have, dev)) == 0 {
			continue
		}
		put.Devices[name] = dev
		changed = append(changed, name)
	}
	if len(changed) == 0 {
		s.Action = InPlace
		return s, nil
	}
	slices.Sort(changed)
	if err := c.UpdateProfile(cfg.Profile, put, etag); err != nil {
		return s, fmt.Errorf("update profile %q (devices %s): %w", cfg.Profile, strings.Join(changed, ", "), err)
	}
	s.Action = Updated
	return s, nil
}
