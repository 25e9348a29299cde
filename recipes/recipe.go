// Package recipes holds the recipe model: one versioned YAML document that
// describes everything ssbuild builds and deploys, in the order the pipeline
// runs (image, installer, cluster, deployments). It loads a recipe with
// positions for every value, applies the defaults (defaults.go, the one place
// they live), and reports every problem at once as file:line:col.
//
// Struct tags: `yaml` names the key; `doc` is the one-line description used
// by the JSON Schema and the reference; `rule` holds "required" and/or
// "enum=a|b|c", checked generically by the loader.
package recipes

import "path/filepath"

// APIVersion is the only recipe format this ssbuild reads.
const APIVersion = "ssbuild/v1"

// Recipe is the whole document.
type Recipe struct {
	APIVersion  string       `yaml:"apiVersion" json:"apiVersion" rule:"required" doc:"format version of this document; must be ssbuild/v1"`
	Name        string       `yaml:"name" json:"name" rule:"required" doc:"short name of this recipe (letters, digits, dashes); used in artifact names"`
	Description string       `yaml:"description,omitempty" json:"description,omitempty" doc:"free text shown by recipe show and plan"`
	Image       Image        `yaml:"image" json:"image" doc:"stage 1: the base image every site instance boots from"`
	Installer   Installer    `yaml:"installer" json:"installer" doc:"stage 2: the USB installer that installs the cluster hosts"`
	Cluster     Cluster      `yaml:"cluster" json:"cluster" doc:"stage 3: the LXD cluster the hosts form on first boot"`
	Deployments []Deployment `yaml:"deployments" json:"deployments" doc:"stage 4: the sites deployed onto the cluster, one LXD project each"`
	Backup      Backup       `yaml:"backup,omitempty" json:"backup,omitempty" doc:"ssbuild backup: who can read the deployments' backups; continuous protection: snapshots and replicas"`

	// File is where the recipe was read from ("builtin:demo" for a shipped
	// one); relative paths in it are relative to its directory.
	File string `yaml:"-" json:"-"`
	dir  string
}

// Backup says how ssbuild backup encrypts: only to the owner's keys, whose
// private halves never sit beside a backup.
type Backup struct {
	Recipients []string  `yaml:"recipients,omitempty" json:"recipients,omitempty" doc:"age public keys (age1...) every backup is encrypted to; ssbuild backup refuses to run without one"`
	Snapshots  Snapshots `yaml:"snapshots,omitempty" json:"snapshots,omitempty" doc:"continuous protection of every deployed instance: LXD snapshots on its member and a replica of its volumes on another member"`
	// RestoreTest, opt-in, lets the cluster restore-test its own backups:
	// it is then able to read them (see docs/backup.md).
	RestoreTest RestoreTest `yaml:"restoreTest,omitempty" json:"restoreTest,omitempty" doc:"scheduled restore tests (opt-in): each backup is also encrypted to a key the cluster derives from the deployment's backup secret, and the member holding the registry lease restores the newest backup in from into a scratch copy every hours; the cluster can then read its own backups"`
}

// RestoreTest schedules restore tests of the backups the cluster takes.
type RestoreTest struct {
	Hours int    `yaml:"hours,omitempty" json:"hours,omitempty" rule:"min=1,max=8760" doc:"every how many hours the newest backup of each deployment is restore-tested (unset: never, and backups stay readable by backup.recipients only)"`
	From  string `yaml:"from,omitempty" json:"from,omitempty" doc:"the backup folder (ssbuild backup --to), mounted at this path on every member"`
}

// Enabled says whether scheduled restore tests are on.
func (t RestoreTest) Enabled() bool { return t.Hours > 0 }

// Snapshots is continuous protection: how often, and for how long.
// Losing a member loses at most Minutes of its instances' data.
type Snapshots struct {
	Minutes int `yaml:"minutes,omitempty" json:"minutes,omitempty" rule:"min=1,max=60" doc:"every how many minutes each instance and its custom volumes get an LXD snapshot (snapshots.schedule) and the replica of its volumes on another member is refreshed"`
	Keep    int `yaml:"keep,omitempty" json:"keep,omitempty" rule:"min=1,max=1000" doc:"how many intervals a snapshot is kept (snapshots.expiry = minutes × keep)"`
}

// Path resolves a path written in the recipe against the recipe's directory.
func (r *Recipe) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || r.dir == "" {
		return p
	}
	return filepath.Join(r.dir, p)
}

// Image describes the instance base image (ssbuild image).
type Image struct {
	Source         Source        `yaml:"source" json:"source" doc:"where the root filesystem comes from"`
	Packages       []string      `yaml:"packages" json:"packages" doc:"Debian/Ubuntu packages installed into the base image"`
	RegistryMirror string        `yaml:"registryMirror,omitempty" json:"registryMirror,omitempty" doc:"Docker registry mirror URL written into the image's Docker daemon config"`
	DockerImages   []DockerImage `yaml:"dockerImages" json:"dockerImages" doc:"Docker images saved into the image and loaded on first boot, so no registry is needed"`
	Chainstate     *Chainstate   `yaml:"chainstate,omitempty" json:"chainstate,omitempty" doc:"Bitcoin chainstate packed as a separate artifact, so nodes start without a days-long sync"`
	Output         ImageOutput   `yaml:"output" json:"output" doc:"which LXD image formats to write"`
	Reproducible   Reproducible  `yaml:"reproducible" json:"reproducible" doc:"settings for byte-identical rebuilds"`
}

// Source is a distribution (debootstrap) or a rootfs tarball.
type Source struct {
	Kind       string   `yaml:"kind" json:"kind" rule:"enum=debootstrap|tarball" doc:"debootstrap a distribution, or unpack a rootfs tarball"`
	Suite      string   `yaml:"suite,omitempty" json:"suite,omitempty" doc:"distribution suite for debootstrap, e.g. jammy or bookworm"`
	Mirror     string   `yaml:"mirror,omitempty" json:"mirror,omitempty" doc:"archive mirror URL for debootstrap"`
	Keyring    string   `yaml:"keyring,omitempty" json:"keyring,omitempty" doc:"path of the archive keyring that signs the mirror's Release file"`
	Variant    string   `yaml:"variant,omitempty" json:"variant,omitempty" rule:"enum=minbase|buildd|fakechroot|default" doc:"debootstrap variant"`
	Components []string `yaml:"components,omitempty" json:"components,omitempty" doc:"archive components, e.g. main, universe"`
	Tarball    string   `yaml:"tarball,omitempty" json:"tarball,omitempty" doc:"rootfs tarball, a local path (relative to the recipe) or an http(s) URL; kind tarball only"`
	SHA256     string   `yaml:"sha256,omitempty" json:"sha256,omitempty" doc:"expected sha256 of the tarball (64 hex digits); required with a tarball"`
}

// DockerImage is one image to pre-load.
type DockerImage struct {
	Ref    string `yaml:"ref" json:"ref" rule:"required" doc:"image reference, e.g. ghost:5.82.2-alpine"`
	Digest string `yaml:"digest,omitempty" json:"digest,omitempty" doc:"pinned content digest (sha256:<64 hex>); the build refuses an image that does not match"`
}

// Chainstate is the pre-loaded Bitcoin state.
type Chainstate struct {
	Network string `yaml:"network" json:"network" rule:"required,enum=mainnet|testnet|signet|regtest" doc:"the Bitcoin network the data belongs to"`
	Kind    string `yaml:"kind" json:"kind" rule:"required,enum=pruned-datadir|assumeutxo" doc:"a pruned datadir (directory or tarball) or an AssumeUTXO snapshot file"`
	Source  string `yaml:"source" json:"source" rule:"required" doc:"file or directory, relative to the recipe"`
	SHA256  string `yaml:"sha256,omitempty" json:"sha256,omitempty" doc:"expected sha256 of the source file (64 hex digits); for a directory, of its manifest"`
}

// ImageOutput selects the LXD image formats.
type ImageOutput struct {
	Formats     []string `yaml:"formats" json:"formats" rule:"enum=container|vm" doc:"container: metadata + rootfs.squashfs and a unified tarball; vm: metadata + qcow2 disk with GPT/ESP"`
	Compression string   `yaml:"compression" json:"compression" rule:"enum=xz|gzip" doc:"squashfs compression: xz (smaller) or gzip (several times faster to build)"`
}

// Reproducible controls byte-identical builds.
type Reproducible struct {
	SourceDateEpoch int64 `yaml:"sourceDateEpoch,omitempty" json:"sourceDateEpoch,omitempty" rule:"min=0" doc:"timestamp (seconds since 1970) stamped on every file; SOURCE_DATE_EPOCH in the environment overrides it"`
}

// Installer describes the USB installer and the hosts it installs.
type Installer struct {
	Source       Source   `yaml:"source" json:"source" doc:"where the host OS's root filesystem comes from (default: image.source); Debian 12 (bookworm) is the host OS that is proven: LXD from Debian, ZFS built for its kernel"`
	Packages     []string `yaml:"packages" json:"packages" doc:"packages of the host OS written to the OS partition (kernel, LXD, ZFS, ...); with zfs-dkms the ZFS module is built for the host's kernel during the build and the compiler removed"`
	Target       Target   `yaml:"target" json:"target" doc:"which disk of a host to install onto (the boot stick is never chosen)"`
	Wipe         bool     `yaml:"wipe" json:"wipe" doc:"allow installing over a disk that holds anything: partitions, a filesystem, LUKS, RAID, LVM, ZFS, swap, or any non-zero byte in its first or last MiB (default: refuse such a disk); the installer prints what it erases"`
	Layout       Layout   `yaml:"layout" json:"layout" doc:"partition sizes of the target disk"`
	AfterInstall string   `yaml:"afterInstall" json:"afterInstall" rule:"enum=reboot|poweroff" doc:"what the installer does when it is done"`
	Hosts        []Host   `yaml:"hosts" json:"hosts" doc:"the cluster hosts this stick installs"`
	SSHKeys      []string `yaml:"sshKeys" json:"sshKeys" doc:"the system owner's SSH public keys (authorized_keys lines)"`
}

// Target selects the install disk: auto, or exactly one of serial, wwid, path.
type Target struct {
	Serial string `yaml:"serial,omitempty" json:"serial,omitempty" doc:"the disk's serial number"`
	WWID   string `yaml:"wwid,omitempty" json:"wwid,omitempty" doc:"the disk's WWID (/sys/block/X/device/wwid)"`
	Path   string `yaml:"path,omitempty" json:"path,omitempty" doc:"a device path, e.g. /dev/nvme0n1 or /dev/disk/by-id/..."`
}

// Auto reports whether the largest suitable disk is picked.
func (t Target) Auto() bool { return t.Serial == "" && t.WWID == "" && t.Path == "" }

// Layout is the partition layout; the ZFS partition takes the rest.
type Layout struct {
	ESP     Size `yaml:"esp,omitempty" json:"esp,omitempty" rule:"min=64MiB,max=4GiB" doc:"EFI system partition size"`
	OS      Size `yaml:"os,omitempty" json:"os,omitempty" rule:"min=4GiB" doc:"OS (ext4) partition size"`
	MinZFS  Size `yaml:"minZFS,omitempty" json:"minZFS,omitempty" rule:"min=1GiB" doc:"smallest ZFS partition the installer accepts; with esp and os it sets the smallest allowed disk"`
	MinDisk Size `yaml:"minDisk,omitempty" json:"minDisk,omitempty" rule:"min=8GiB" doc:"smallest disk the installer will install onto"`
}

// Need is the least disk the partitions fit on: ESP + OS + the smallest ZFS
// partition, with the 1 MiB GPT keeps in front and behind for its headers
// and alignment. recipe validate and the installer's disk choice share it.
func (l Layout) Need() Size { return l.ESP + l.OS + l.MinZFS + 2*MiB }

// Host is one cluster host.
type Host struct {
	Name    string  `yaml:"name" json:"name" rule:"required" doc:"host name (DNS label); also the LXD cluster member name"`
	MAC     MAC     `yaml:"mac,omitempty" json:"mac,omitempty" doc:"MAC address of the NIC that identifies this host on the installer's first boot"`
	Address string  `yaml:"address,omitempty" json:"address,omitempty" doc:"static IPv4 address with prefix, e.g. 192.168.1.11/24; every host needs one (the hosts find each other by them)"`
	Gateway string  `yaml:"gateway,omitempty" json:"gateway,omitempty" doc:"default gateway with a static address"`
	Target  *Target `yaml:"target,omitempty" json:"target,omitempty" doc:"this host's install disk, overriding installer.target"`
}

// Cluster describes the LXD cluster.
type Cluster struct {
	Name             string    `yaml:"name" json:"name" doc:"cluster name"`
	Initiator        string    `yaml:"initiator" json:"initiator" doc:"the host that bootstraps the cluster, the others join it (default: the first host)"`
	Secret           Secret    `yaml:"secret" json:"secret" doc:"the pre-shared secret the hosts prove to each other; never inline"`
	RegistrationPort int       `yaml:"registrationPort,omitempty" json:"registrationPort,omitempty" rule:"min=1,max=65535" doc:"TCP port of the initiator's registration endpoint"`
	Storage          Storage   `yaml:"storage" json:"storage" doc:"the cluster's storage pool"`
	Networks         []Network `yaml:"networks" json:"networks" doc:"LXD networks created on the cluster"`
}

// Secret is a file reference or generated at build time.
type Secret struct {
	File     string `yaml:"file,omitempty" json:"file,omitempty" doc:"file holding the secret, relative to the recipe (kept out of version control; 0600, yours, at least 32 characters)"`
	Generate bool   `yaml:"generate,omitempty" json:"generate,omitempty" doc:"generate a fresh secret when the installer is built"`
}

// Storage is the LXD storage pool.
type Storage struct {
	Pool   string `yaml:"pool" json:"pool" doc:"storage pool name"`
	Driver string `yaml:"driver" json:"driver" rule:"enum=zfs|btrfs|dir" doc:"zfs on the ZFS partition in production; dir or btrfs for tests"`
}

// Network is one LXD network.
type Network struct {
	Name string `yaml:"name" json:"name" rule:"required" doc:"network name (at most 15 characters, a Linux interface name)"`
	Type string `yaml:"type" json:"type" rule:"enum=bridge|macvlan" doc:"bridge (LXD-managed, NAT) or macvlan onto a host interface"`
	IPv4 string `yaml:"ipv4,omitempty" json:"ipv4,omitempty" doc:"bridge address with prefix, auto, or none"`
	// Parent is per member in LXD; one name for every host keeps NUCs alike.
	Parent string `yaml:"parent,omitempty" json:"parent,omitempty" doc:"host interface a macvlan network attaches to"`
}

// Deployment is one LXD project with its sites and instances.
type Deployment struct {
	Name          string    `yaml:"name" json:"name" rule:"required" doc:"deployment prefix; the LXD project is <name>-<chain>"`
	Chain         string    `yaml:"chain" json:"chain" rule:"enum=mainnet|testnet|signet|regtest" doc:"Bitcoin network of this deployment"`
	Stack         string    `yaml:"stack" json:"stack" rule:"enum=sovereign|demo" doc:"which shipped service stack to deploy: the full sovereign stack, or tiny test services"`
	PrimaryDomain string    `yaml:"primaryDomain" json:"primaryDomain" rule:"required" doc:"the main site's domain; BTCPay and Clams are served under it"`
	Sites         []Site    `yaml:"sites" json:"sites" doc:"websites of this deployment; the primary domain's site is added if missing"`
	Instances     Instances `yaml:"instances" json:"instances" doc:"the LXD instances of this deployment"`
}

// Project is the LXD project name of a deployment.
func (d Deployment) Project() string { return d.Name + "-" + d.Chain }

// Site is one website and the services it runs.
type Site struct {
	Domain         string   `yaml:"domain" json:"domain" rule:"required" doc:"the site's domain name"`
	Languages      []string `yaml:"languages" json:"languages" doc:"Ghost language codes (ISO 639-1), one Ghost per language; the first is served at /"`
	BTCPayAltNames []string `yaml:"btcpayAltNames" json:"btcpayAltNames" doc:"extra host names under the domain that serve BTCPay, e.g. pay, tip"`
	Services       []string `yaml:"services" json:"services" rule:"enum=ghost|nextcloud|gitea|nostr-relay" doc:"services of this site: ghost (www.<domain>), nextcloud (nextcloud.<domain>), gitea (git.<domain>), nostr-relay (relay.<domain>, owner only)"`
	NostrOwner     string   `yaml:"nostrOwnerPubkey,omitempty" json:"nostrOwnerPubkey,omitempty" doc:"the only pubkey the nostr-relay accepts events from: npub1... or 64 hex digits"`
}

// Has reports whether the site runs service.
func (s Site) Has(service string) bool {
	for _, x := range s.Services {
		if x == service {
			return true
		}
	}
	return false
}

// Instances are the three instance roles of a deployment.
type Instances struct {
	WWW    Instance `yaml:"www" json:"www" doc:"reverse proxy, Ghost, Nextcloud, Gitea, Nostr relay"`
	BTCPay Instance `yaml:"btcpay" json:"btcpay" doc:"BTCPay Server, NBXplorer, bitcoind, Core Lightning"`
	Clams  Instance `yaml:"clams" json:"clams" doc:"Clams / BOLT12 prism"`
}

// Roles lists the instances with their role names, in deploy order.
func (i *Instances) Roles() []Role {
	return []Role{{"www", &i.WWW}, {"btcpay", &i.BTCPay}, {"clams", &i.Clams}}
}

// Role is an instance with its role name.
type Role struct {
	Name     string
	Instance *Instance
}

// Instance is one LXD instance.
type Instance struct {
	Enabled *bool  `yaml:"enabled,omitempty" json:"enabled,omitempty" doc:"create this instance (default true)"`
	Type    string `yaml:"type" json:"type" rule:"enum=virtual-machine|container" doc:"LXD instance type (default container; deploy refuses virtual-machine for now)"`
	MAC     MAC    `yaml:"mac,omitempty" json:"mac,omitempty" doc:"pinned MAC address of the LAN NIC (for a DHCP reservation)"`
	// Host pins where a new instance goes, e.g. onto a host a later recipe
	// revision added; placement never moves an instance that exists.
	Host   string `yaml:"host,omitempty" json:"host,omitempty" doc:"the cluster host (one of installer.hosts) that creates this instance; default the online member with the fewest instances. An instance that exists stays where it is"`
	CPUs   int    `yaml:"cpus,omitempty" json:"cpus,omitempty" rule:"min=1,max=256" doc:"limits.cpu"`
	Memory Size   `yaml:"memory,omitempty" json:"memory,omitempty" rule:"min=256MiB" doc:"limits.memory"`
	Disks  Disks  `yaml:"disks" json:"disks" doc:"root disk and custom volume sizes"`
}

// IsEnabled is true unless the recipe turned the instance off.
func (i Instance) IsEnabled() bool { return i.Enabled == nil || *i.Enabled }

// Disks are an instance's root disk and custom volumes.
type Disks struct {
	Root   Size `yaml:"root,omitempty" json:"root,omitempty" rule:"min=1GiB" doc:"root disk size"`
	Docker Size `yaml:"docker,omitempty" json:"docker,omitempty" rule:"min=1GiB" doc:"volume for /var/lib/docker"`
	Data   Size `yaml:"data,omitempty" json:"data,omitempty" rule:"min=1GiB" doc:"volume for the site data (ss-data)"`
	Backup Size `yaml:"backup,omitempty" json:"backup,omitempty" rule:"min=1GiB" doc:"volume for backups"`
}
