package deploy

import (
	"fmt"
	"maps"
	"strconv"

	"github.com/sovereign-stack/ssbuild/appliance/deploy/cloudinit"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// BaseImageAlias names the base image (the output of `ssbuild image`) in
// LXD's default project; every deployment's project uses it from there.
const BaseImageAlias = "ssbuild/base"

// Labels on LXD objects ssbuild manages.
const (
	keyDeployment = "user.ssbuild.deployment"
	keyRole       = "user.ssbuild.role"
)

// Volume mount points inside an instance.
var volumePaths = map[string]string{
	"docker": "/var/lib/docker",
	"data":   "/var/lib/ss-data",
	"backup": "/var/backups/ss",
}

// volumeKinds in the order they are created.
var volumeKinds = []string{"docker", "data", "backup"}

// InstanceSpec is the LXD side of one instance as the recipe wants it.
type InstanceSpec struct {
	Project string
	Name    string // the role: www, btcpay, clams
	Type    string // container or virtual-machine
	Host    string `yaml:",omitempty"` // the member a new instance goes to (instances.<role>.host); "" for the least-loaded
	Config  map[string]string
	Devices map[string]map[string]string
	Volumes []VolumeSpec
}

// VolumeSpec is one custom volume of an instance.
type VolumeSpec struct {
	Name   string // <instance>-<kind>
	Kind   string // docker, data, backup
	Config map[string]string
}

// Target says where a deployment's instances live.
type Target struct {
	Pool    string // storage pool (cluster.storage.pool)
	Driver  string // its driver: dir pools cannot enforce sizes
	Network string // network eth0 attaches to
}

// Specs returns the enabled instances of a deployment, in deploy order.
func Specs(r *recipes.Recipe, d recipes.Deployment, t Target) ([]InstanceSpec, error) {
	var out []InstanceSpec
	for _, role := range d.Instances.Roles() {
		in := role.Instance
		if !in.IsEnabled() {
			continue
		}
		ud, err := cloudinit.UserData(cloudinit.Instance{Hostname: role.Name, Deployment: d.Project(),
			Role: role.Name, SSHKeys: r.Installer.SSHKeys})
		if err != nil {
			return nil, err
		}
		s := InstanceSpec{
			Project: d.Project(), Name: role.Name, Type: in.Type, Host: in.Host,
			Config: map[string]string{
				keyDeployment:          d.Project(),
				keyRole:                role.Name,
				"cloud-init.user-data": string(ud),
				"boot.autostart":       "true",
			},
			Devices: map[string]map[string]string{
				"root": {"type": "disk", "path": "/", "pool": t.Pool},
				"eth0": {"type": "nic", "network": t.Network},
			},
		}
		if publishesHostPorts(d, role.Name) {
			// The sites answer on the member's own address: its ports 80
			// and 443 lead to the reverse proxy the instance publishes.
			for name, port := range map[string]string{"http": "80", "https": "443"} {
				s.Devices[name] = map[string]string{"type": "proxy", "bind": "host",
					"listen": "tcp:0.0.0.0:" + port, "connect": "tcp:127.0.0.1:" + port}
			}
		}
		sized := t.Driver != "dir" // the dir driver has no quotas here
		// LXD's scheduled snapshots, on copy-on-write pools: on dir each
		// one is a full copy with the instance frozen meanwhile.
		snapshots := map[string]string{}
		if t.Driver != "dir" {
			snapshots = SnapshotConfig(r)
		}
		maps.Copy(s.Config, snapshots)
		if in.Type == "container" {
			// Docker runs inside: it needs nested containers.
			s.Config["security.nesting"] = "true"
			s.Config["security.syscalls.intercept.mknod"] = "true"
			s.Config["security.syscalls.intercept.setxattr"] = "true"
		}
		if in.CPUs > 0 {
			s.Config["limits.cpu"] = strconv.Itoa(in.CPUs)
		}
		if in.Memory > 0 {
			s.Config["limits.memory"] = strconv.FormatInt(int64(in.Memory), 10) + "B"
		}
		if in.MAC != "" {
			s.Devices["eth0"]["hwaddr"] = string(in.MAC)
		}
		if sized && in.Disks.Root > 0 {
			s.Devices["root"]["size"] = sizeString(in.Disks.Root)
		}
		sizes := map[string]recipes.Size{"docker": in.Disks.Docker, "data": in.Disks.Data, "backup": in.Disks.Backup}
		for _, kind := range volumeKinds {
			v := VolumeSpec{Name: role.Name + "-" + kind, Kind: kind, Config: maps.Clone(snapshots)}
			if sized && sizes[kind] > 0 {
				v.Config["size"] = sizeString(sizes[kind])
			}
			s.Volumes = append(s.Volumes, v)
			s.Devices[kind] = map[string]string{"type": "disk", "pool": t.Pool, "source": v.Name, "path": volumePaths[kind]}
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("deployment %s: every instance is disabled", d.Name)
	}
	return out, nil
}

// SnapshotConfig is the LXD config that snapshots an instance or a custom
// volume every backup.snapshots.minutes and expires each snapshot after
// keep of them: LXD's own scheduler takes and prunes them on the member.
func SnapshotConfig(r *recipes.Recipe) map[string]string {
	sn := r.Backup.Snapshots
	schedule := fmt.Sprintf("*/%d * * * *", sn.Minutes)
	if sn.Minutes >= 60 {
		schedule = "0 * * * *"
	}
	return map[string]string{
		"snapshots.schedule": schedule,
		"snapshots.expiry":   fmt.Sprintf("%dM", sn.Minutes*sn.Keep), // M: minutes in LXD's expiry syntax
	}
}

func sizeString(s recipes.Size) string { return strconv.FormatInt(int64(s), 10) + "B" }
