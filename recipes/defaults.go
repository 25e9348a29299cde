package recipes

import "slices"

// This file is the one place where recipe defaults live. `ssbuild recipe
// show` prints a recipe after applyDefaults, so every value in effect is
// visible.

// Ubuntu 22.04 is the target; Debian suites are known so that the demo and
// the tests (which can only reach Debian's mirror) get matching defaults.
var debianSuites = map[string]bool{"bullseye": true, "bookworm": true, "trixie": true, "sid": true}

const (
	defaultSuite         = "jammy"
	ubuntuMirror         = "http://archive.ubuntu.com/ubuntu"
	ubuntuKeyring        = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
	debianMirror         = "http://deb.debian.org/debian"
	debianKeyring        = "/usr/share/keyrings/debian-archive-keyring.gpg"
	defaultRegistration  = 9443
	defaultStoragePool   = "ss-base"
	defaultBridge        = "lxdbr0"
	defaultInstanceCPUs  = 4
	defaultInstanceMemGB = 4
	defaultSnapshotKeep  = 4 // intervals (an hour by default)
)

// DefaultSnapshotMinutes is continuous protection's default interval: a
// snapshot and a replica refresh every 15 minutes.
const DefaultSnapshotMinutes = 15

// IsDebian reports whether the source suite is a Debian release.
func (s Source) IsDebian() bool { return debianSuites[s.Suite] }

// applySourceDefaults fills a debootstrap source's suite, variant, mirror,
// keyring and components for its distribution.
func applySourceDefaults(src *Source) {
	if src.Kind == "" {
		src.Kind = "debootstrap"
		if src.Tarball != "" {
			src.Kind = "tarball"
		}
	}
	if src.Kind == "debootstrap" {
		setString(&src.Suite, defaultSuite)
		setString(&src.Variant, "minbase")
		if src.IsDebian() {
			setString(&src.Mirror, debianMirror)
			setString(&src.Keyring, debianKeyring)
			setList(&src.Components, "main")
		} else {
			setString(&src.Mirror, ubuntuMirror)
			setString(&src.Keyring, ubuntuKeyring)
			setList(&src.Components, "main", "universe")
		}
	}
}

func applyDefaults(r *Recipe) {
	img := &r.Image
	src := &img.Source
	applySourceDefaults(src)
	// What every site instance needs: an init to boot (debootstrap's
	// minbase has none), Docker for the stacks, cloud-init for LXD's
	// user-data, SSH for the owner.
	setList(&img.Output.Formats, "container", "vm")
	if img.Packages == nil {
		img.Packages = []string{"systemd-sysv", "docker.io", "cloud-init", "openssh-server", "ca-certificates"}
		// A VM image boots its own kernel with systemd-boot from its ESP.
		if slices.Contains(img.Output.Formats, "vm") {
			if src.IsDebian() {
				img.Packages = append(img.Packages, "linux-image-amd64", "systemd-boot-efi")
			} else {
				img.Packages = append(img.Packages, "linux-virtual", "systemd-boot-efi")
			}
		}
	}
	setString(&img.Output.Compression, "xz")
	if img.DockerImages == nil {
		img.DockerImages = []DockerImage{}
	}

	in := &r.Installer
	inherited := in.Source.Kind == "" && in.Source.Suite == "" && in.Source.Tarball == ""
	if inherited {
		// Unwritten: Debian 12 hosts, the host OS proven here (LXD from
		// Debian, ZFS built for its kernel); a Debian image's own source
		// when it has one, so both share one debootstrap.
		in.Source = Source{Kind: "debootstrap", Suite: "bookworm", Components: []string{"main", "contrib"}}
		if img.Source.Kind == "debootstrap" && img.Source.IsDebian() {
			in.Source = img.Source
			in.Source.Components = slices.Clone(img.Source.Components)
		}
	}
	applySourceDefaults(&in.Source)
	if in.Source.IsDebian() {
		// zfs-dkms: Debian ships ZFS as source (contrib); hostos builds it
		// for the host's kernel and leaves no compiler behind.
		setList(&in.Packages, "linux-image-amd64", "systemd-boot", "lxd", "zfs-dkms", "zfsutils-linux", "openssh-server", "systemd-timesyncd")
		if inherited && slices.Contains(in.Packages, "zfs-dkms") && !slices.Contains(in.Source.Components, "contrib") {
			in.Source.Components = append(in.Source.Components, "contrib")
		}
	} else {
		// On Ubuntu LXD is a snap; the installer seeds it for an offline first boot.
		setList(&in.Packages, "linux-generic", "systemd-boot", "snapd", "zfsutils-linux", "openssh-server")
	}
	setSize(&in.Layout.ESP, 512*MiB)
	setSize(&in.Layout.OS, 50*GiB)
	setSize(&in.Layout.MinZFS, 8*GiB)
	setSize(&in.Layout.MinDisk, 64*GiB)
	setString(&in.AfterInstall, "reboot")
	if in.SSHKeys == nil {
		in.SSHKeys = []string{}
	}

	c := &r.Cluster
	setString(&c.Name, r.Name)
	if c.Initiator == "" && len(in.Hosts) > 0 {
		c.Initiator = in.Hosts[0].Name
	}
	if c.Secret.File == "" && !c.Secret.Generate {
		c.Secret.Generate = true
	}
	if c.RegistrationPort == 0 {
		c.RegistrationPort = defaultRegistration
	}
	setString(&c.Storage.Pool, defaultStoragePool)
	setString(&c.Storage.Driver, "zfs")
	if c.Networks == nil {
		c.Networks = []Network{{Name: defaultBridge, Type: "bridge", IPv4: "auto"}}
	}
	for i := range c.Networks {
		setString(&c.Networks[i].Type, "bridge")
		if c.Networks[i].Type == "bridge" {
			setString(&c.Networks[i].IPv4, "auto")
		}
	}

	if r.Backup.Snapshots.Minutes == 0 {
		r.Backup.Snapshots.Minutes = DefaultSnapshotMinutes
	}
	if r.Backup.Snapshots.Keep == 0 {
		r.Backup.Snapshots.Keep = defaultSnapshotKeep
	}

	if r.Deployments == nil {
		r.Deployments = []Deployment{}
	}
	for i := range r.Deployments {
		applyDeploymentDefaults(&r.Deployments[i])
	}
}

func applyDeploymentDefaults(d *Deployment) {
	setString(&d.Chain, "regtest")
	setString(&d.Stack, "sovereign")
	if d.PrimaryDomain != "" && !hasSite(d.Sites, d.PrimaryDomain) {
		// Appended, not prepended: the sites the recipe wrote keep their
		// indices, so problems point at the right line.
		d.Sites = append(d.Sites, Site{Domain: d.PrimaryDomain})
	}
	for i := range d.Sites {
		s := &d.Sites[i]
		setList(&s.Languages, "en")
		setList(&s.Services, "ghost")
		if s.BTCPayAltNames == nil {
			s.BTCPayAltNames = []string{}
		}
	}
	for _, role := range d.Instances.Roles() {
		in := role.Instance
		if in.Enabled == nil {
			on := true
			in.Enabled = &on
		}
		setString(&in.Type, "container")
		if in.CPUs == 0 {
			in.CPUs = defaultInstanceCPUs
		}
		setSize(&in.Memory, defaultInstanceMemGB*GiB)
		bySize, ok := volumeSizes[d.Chain]
		if !ok { // an unknown chain is reported by validation
			bySize = volumeSizes["regtest"]
		}
		sizes := bySize[role.Name]
		setSize(&in.Disks.Root, 20*GiB)
		setSize(&in.Disks.Data, sizes[0]*GiB)
		setSize(&in.Disks.Backup, sizes[1]*GiB)
		setSize(&in.Disks.Docker, sizes[2]*GiB)
	}
}

// volumeSizes are Sovereign Stack's per-chain volume sizes in GiB, as
// data / backup / docker: mainnet needs room for the block chain.
var volumeSizes = map[string]map[string][3]Size{
	"regtest": {"www": {20, 50, 30}, "btcpay": {20, 20, 30}, "clams": {20, 20, 100}},
	"signet":  {"www": {20, 20, 30}, "btcpay": {20, 20, 50}, "clams": {20, 20, 20}},
	"testnet": {"www": {30, 30, 50}, "btcpay": {30, 30, 100}, "clams": {20, 20, 20}},
	"mainnet": {"www": {40, 40, 50}, "btcpay": {30, 30, 500}, "clams": {20, 20, 400}},
}

func hasSite(sites []Site, domain string) bool {
	for _, s := range sites {
		if s.Domain == domain {
			return true
		}
	}
	return false
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

// setList fills a list that the recipe did not write; an empty list written
// as [] stays empty.
func setList(p *[]string, v ...string) {
	if *p == nil {
		*p = v
	}
}

func setSize(p *Size, v Size) {
	if *p == 0 {
		*p = v
	}
}
