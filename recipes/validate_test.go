package recipes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// base is a minimal valid recipe; cases append top-level sections to it, so
// their first line is line 6.
const base = `apiVersion: ssbuild/v1
name: t
installer:
  hosts:
    - name: h1
`

// problemsOf parses text as t.yaml and returns the problem lines.
func problemsOf(t *testing.T, text string) []string {
	t.Helper()
	_, err := Parse("t.yaml", []byte(text), "")
	if err == nil {
		return nil
	}
	ps := Problems(err)
	if ps == nil {
		t.Fatalf("error is not a list of problems: %v", err)
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func expectProblems(t *testing.T, text string, want ...string) {
	t.Helper()
	got := problemsOf(t, text)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems differ\n got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestShippedRecipesAreValid(t *testing.T) {
	for _, name := range Builtins() {
		r, err := Open(name)
		if err != nil {
			t.Fatalf("shipped recipe %s: %v", name, err)
		}
		if r.File != "builtin:"+name {
			t.Errorf("File = %q", r.File)
		}
	}
}

func TestMinimalRecipeGetsDefaults(t *testing.T) {
	r, err := Parse("t.yaml", []byte(base), "")
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]any{
		"suite":     {r.Image.Source.Suite, "jammy"},
		"mirror":    {r.Image.Source.Mirror, ubuntuMirror},
		"esp":       {r.Installer.Layout.ESP, 512 * MiB},
		"os":        {r.Installer.Layout.OS, 50 * GiB},
		"initiator": {r.Cluster.Initiator, "h1"},
		"secret":    {r.Cluster.Secret.Generate, true},
		"driver":    {r.Cluster.Storage.Driver, "zfs"},
		"after":     {r.Installer.AfterInstall, "reboot"},
		"cluster":   {r.Cluster.Name, "t"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s = %v, want %v", name, c[0], c[1])
		}
	}
}

func TestDeploymentDefaultsFollowChain(t *testing.T) {
	r, err := Parse("t.yaml", []byte(base+`deployments:
  - name: prod
    chain: mainnet
    primaryDomain: example.com
  - name: dev
    primaryDomain: dev.example.com
`), "")
	if err != nil {
		t.Fatal(err)
	}
	prod, dev := r.Deployments[0], r.Deployments[1]
	if prod.Instances.BTCPay.Disks.Docker != 500*GiB || dev.Instances.BTCPay.Disks.Docker != 30*GiB {
		t.Errorf("btcpay docker volume: mainnet %s, regtest %s; want 500GiB and 30GiB",
			prod.Instances.BTCPay.Disks.Docker, dev.Instances.BTCPay.Disks.Docker)
	}
	if dev.Chain != "regtest" || dev.Project() != "dev-regtest" {
		t.Errorf("dev chain %q project %q", dev.Chain, dev.Project())
	}
	if len(prod.Sites) != 1 || prod.Sites[0].Domain != "example.com" || !prod.Sites[0].Has("ghost") {
		t.Errorf("primary domain site not added with ghost: %+v", prod.Sites)
	}
	if !prod.Instances.Clams.IsEnabled() || prod.Instances.WWW.Type != "container" {
		t.Errorf("instance defaults: %+v", prod.Instances.WWW)
	}
}

func TestRelativePathsFollowTheRecipe(t *testing.T) {
	r, err := Parse("/srv/r/t.yaml", []byte(base), "/srv/r")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Path("chain/state.dat"); got != "/srv/r/chain/state.dat" {
		t.Errorf("Path = %q", got)
	}
	if got := r.Path("/abs/x"); got != "/abs/x" {
		t.Errorf("Path = %q", got)
	}
}

func TestStructureProblems(t *testing.T) {
	t.Run("syntax", func(t *testing.T) {
		expectProblems(t, "name: [a\n", `t.yaml:1:1: not valid YAML: did not find expected ',' or ']'`)
	})
	t.Run("empty", func(t *testing.T) {
		expectProblems(t, "# nothing\n", "t.yaml:1:1: the recipe is empty; start from `ssbuild recipe show demo`")
	})
	t.Run("not a mapping", func(t *testing.T) {
		expectProblems(t, "- a\n", `t.yaml:1:1: a recipe is a mapping of keys (apiVersion, name, image, installer, cluster, deployments), not a list`)
	})
	t.Run("required top level", func(t *testing.T) {
		expectProblems(t, "installer:\n  hosts:\n    - name: h1\n",
			`t.yaml:1:1: apiVersion: missing; this field is required`,
			`t.yaml:1:1: name: missing; this field is required`)
	})
	t.Run("required nested", func(t *testing.T) {
		expectProblems(t, "apiVersion: ssbuild/v1\nname: t\ninstaller:\n  hosts:\n    - mac: 00:16:3e:00:00:01\n",
			`t.yaml:5:7: installer.hosts[0].name: missing; this field is required`)
	})
	t.Run("empty values", func(t *testing.T) {
		expectProblems(t, "apiVersion:\nname: t\ninstaller:\n  hosts:\n  -\n  - name:\n",
			`t.yaml:1:12: apiVersion: is empty; this field is required`,
			`t.yaml:5:4: installer.hosts[0]: is an empty entry; write its fields`,
			`t.yaml:6:10: installer.hosts[1].name: is empty; this field is required`)
	})
	t.Run("installer required", func(t *testing.T) {
		expectProblems(t, "apiVersion: ssbuild/v1\nname: t\n", `t.yaml:1:1: installer.hosts: missing; list the hosts this installer installs (at least one)`)
	})
	t.Run("hosts required", func(t *testing.T) {
		expectProblems(t, "apiVersion: ssbuild/v1\nname: t\ninstaller:\n  wipe: true\n",
			`t.yaml:4:3: installer.hosts: missing; list the hosts this installer installs (at least one)`)
	})
	t.Run("unknown keys", func(t *testing.T) {
		expectProblems(t, base+"imge: {}\ncluster:\n  secret:\n    value: hunter2\n",
			`t.yaml:6:1: imge: unknown field (allowed here: apiVersion, name, description, image, installer, cluster, deployments, backup)`,
			`t.yaml:9:5: cluster.secret.value: unknown field (allowed here: file, generate)`)
	})
	t.Run("duplicate key", func(t *testing.T) {
		expectProblems(t, base+"name: u\n", `t.yaml:6:1: name: written twice; keep one`)
	})
	t.Run("wrong types", func(t *testing.T) {
		expectProblems(t, base+`image:
  packages: docker.io
  source: debian
  output:
    formats: [[container]]
cluster:
  registrationPort: "9443"
  secret: {generate: yes}
  storage: {pool: {name: x}}
`,
			`t.yaml:7:13: image.packages: must be a list, not "docker.io"`,
			`t.yaml:8:11: image.source: must be a mapping of keys to values, not "debian"`,
			`t.yaml:10:15: image.output.formats[0]: must be a string, not a list`,
			`t.yaml:12:21: cluster.registrationPort: "9443" is not a whole number`,
			`t.yaml:13:22: cluster.secret.generate: "yes" is not true or false`,
			`t.yaml:14:19: cluster.storage.pool: must be a string, not a mapping`)
	})
	t.Run("enums", func(t *testing.T) {
		expectProblems(t, base+`image:
  source: {kind: iso, variant: tiny}
  output: {formats: [container, ova]}
cluster:
  storage: {driver: lvm}
  networks: [{name: n0, type: ovn}]
deployments:
  - name: p
    chain: liquid
    stack: umbrel
    primaryDomain: example.com
    sites: [{domain: example.com, services: [ghost, wordpress]}]
    instances: {www: {type: pod}}
`,
			`t.yaml:7:18: image.source.kind: "iso" is not allowed (allowed: debootstrap, tarball)`,
			`t.yaml:7:32: image.source.variant: "tiny" is not allowed (allowed: minbase, buildd, fakechroot, default)`,
			`t.yaml:8:33: image.output.formats[1]: "ova" is not allowed (allowed: container, vm)`,
			`t.yaml:10:21: cluster.storage.driver: "lvm" is not allowed (allowed: zfs, btrfs, dir)`,
			`t.yaml:11:31: cluster.networks[0].type: "ovn" is not allowed (allowed: bridge, macvlan)`,
			`t.yaml:14:12: deployments[0].chain: "liquid" is not allowed (allowed: mainnet, testnet, signet, regtest)`,
			`t.yaml:15:12: deployments[0].stack: "umbrel" is not allowed (allowed: sovereign, demo)`,
			`t.yaml:17:53: deployments[0].sites[0].services[1]: "wordpress" is not allowed (allowed: ghost, nextcloud, gitea, nostr-relay)`,
			`t.yaml:18:29: deployments[0].instances.www.type: "pod" is not allowed (allowed: virtual-machine, container)`)
	})
	t.Run("alias bomb", func(t *testing.T) {
		// Anchors in an unknown (never decoded) key: 100 deployments of 100
		// sites of 100 languages each, a million values from a few lines.
		many := func(alias string) string {
			return "[" + strings.TrimSuffix(strings.Repeat(alias+", ", 100), ", ") + "]"
		}
		doc := base + "x-anchors:\n  l: &l en\n  s: &s {domain: a.example.com, languages: " + many("*l") +
			"}\n  d: &d {name: p, primaryDomain: a.example.com, sites: " + many("*s") + "}\ndeployments: " + many("*d") + "\n"
		got := problemsOf(t, doc)
		if len(got) != 1 || !strings.Contains(got[0], "document is too large (more than 100000 values") {
			t.Fatalf("alias bomb not refused with one problem: %d problems, first %q", len(got), got[:min(len(got), 1)])
		}
	})
}

func TestValueProblems(t *testing.T) {
	t.Run("sizes", func(t *testing.T) {
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  hosts: [{name: h1}]
  layout: {esp: 50 gigs, os: -1GiB, minZFS: 1.5B, minDisk: 1e3GB}
`,
			`t.yaml:5:17: installer.layout.esp: "50 gigs" is not a size like 512MiB, 50GiB or 2TB`,
			`t.yaml:5:30: installer.layout.os: "-1GiB" is not a size like 512MiB, 50GiB or 2TB`,
			`t.yaml:5:45: installer.layout.minZFS: "1.5B" is not a whole number of bytes`,
			`t.yaml:5:60: installer.layout.minDisk: "1e3GB" is not a size like 512MiB, 50GiB or 2TB`)
	})
	t.Run("size without unit", func(t *testing.T) {
		expectProblems(t, base+`deployments:
  - name: d
    primaryDomain: example.com
    instances:
      www: {memory: 4096, disks: {root: 0}}
`,
			`t.yaml:10:21: deployments[0].instances.www.memory: "4096" has no unit; write one, like 4096MiB or 4096GiB (4096B for bytes)`,
			`t.yaml:10:41: deployments[0].instances.www.disks.root: "0" has no unit; write one, like 0MiB or 0GiB (0B for bytes)`)
	})
	t.Run("paths leave the recipe's folder", func(t *testing.T) {
		expectProblems(t, base+`image:
  source: {kind: tarball, tarball: ../rootfs.tar, sha256: `+strings.Repeat("a", 64)+`}
  chainstate: {network: signet, kind: assumeutxo, source: data/../../chain.dat}
cluster:
  secret: {file: /etc/ssbuild/cluster.secret}
deployments:
  - {name: d, chain: signet, primaryDomain: example.com}
`,
			`t.yaml:7:36: image.source.tarball: "../rootfs.tar" leaves the recipe's folder; keep the rootfs tarball next to the recipe (or below it), or write an absolute path`,
			`t.yaml:8:59: image.chainstate.source: "data/../../chain.dat" leaves the recipe's folder; keep the chainstate next to the recipe (or below it), or write an absolute path`)
	})
	t.Run("layout ranges and fit", func(t *testing.T) {
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  hosts: [{name: h1}]
  layout: {esp: 16MiB, os: 2GiB}
`,
			`t.yaml:5:17: installer.layout.esp: 16MiB is out of range (64MiB to 4GiB)`,
			`t.yaml:5:28: installer.layout.os: 2GiB is too small (at least 4GiB)`)
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  hosts: [{name: h1}]
  layout: {os: 60GiB, minDisk: 64GiB}
`,
			`t.yaml:5:16: installer.layout.os: esp 512MiB + os 60GiB + minZFS 8GiB (+2MiB for GPT) = 70146MiB do not fit on the smallest allowed disk (minDisk 64GiB); lower os or raise minDisk`)
	})
	t.Run("MACs", func(t *testing.T) {
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  hosts:
    - {name: h1, mac: "00:16:3e:zz:00:01"}
    - {name: h2, mac: "01:00:5e:00:00:01"}
    - {name: h3, mac: "00-16-3E-00-00-0A"}
deployments:
  - name: p
    primaryDomain: example.com
    instances:
      www: {mac: "00:16:3e:00:00:0a"}
`,
			`t.yaml:5:23: installer.hosts[0].mac: "00:16:3e:zz:00:01" is not a MAC address (six hex pairs, like 00:16:3e:12:34:56)`,
			`t.yaml:6:23: installer.hosts[1].mac: "01:00:5e:00:00:01" is a multicast address; a NIC needs a unicast MAC (first byte even)`,
			`t.yaml:12:18: deployments[0].instances.www.mac: 00:16:3e:00:00:0a is already the MAC of installer.hosts[2].mac; every NIC needs its own`)
	})
	t.Run("api version and names", func(t *testing.T) {
		expectProblems(t, `apiVersion: ssbuild/v2
name: My Recipe
installer:
  hosts:
    - name: h1
    - name: H_2
    - name: h1
`,
			`t.yaml:1:13: apiVersion: "ssbuild/v2" is not supported (this ssbuild reads ssbuild/v1)`,
			`t.yaml:2:7: name: "My Recipe" is not a valid name (lower-case letters, digits and dashes, at most 63)`,
			`t.yaml:6:13: installer.hosts[1].name: "H_2" is not a host name (lower-case letters, digits and dashes, at most 63)`,
			`t.yaml:7:13: installer.hosts[2].name: "h1" is already the name of installer.hosts[0]`)
	})
	t.Run("empty host list", func(t *testing.T) {
		expectProblems(t, "apiVersion: ssbuild/v1\nname: t\ninstaller:\n  hosts: []\n",
			`t.yaml:4:10: installer.hosts: lists no host; a cluster needs at least one`)
	})
	t.Run("host addresses", func(t *testing.T) {
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  hosts:
    - {name: h1, address: 192.168.1.300/24}
    - {name: h2, gateway: 192.168.1.1}
    - {name: h3, address: 192.168.1.13/24, gateway: 10.0.0.1}
    - {name: h4, address: 192.168.1.14/24, gateway: fe80::1}
`,
			`t.yaml:5:27: installer.hosts[0].address: "192.168.1.300/24" is not an IPv4 address with prefix (like 192.168.1.11/24)`,
			`t.yaml:6:27: installer.hosts[1].gateway: a gateway needs a static address; set address or remove gateway`,
			`t.yaml:7:53: installer.hosts[2].gateway: 10.0.0.1 is not in the host's subnet 192.168.1.0/24`,
			`t.yaml:8:53: installer.hosts[3].gateway: "fe80::1" is not an IPv4 address`)
	})
	t.Run("targets", func(t *testing.T) {
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  target: {serial: S123, path: /dev/sda}
  hosts:
    - {name: h1, target: {path: sda}}
`,
			`t.yaml:4:11: installer.target: names the disk more than one way; keep one of serial, wwid or path (or none for auto)`,
			`t.yaml:6:33: installer.hosts[0].target.path: "sda" is not a device path (it must start with /dev/)`)
	})
	t.Run("ssh keys", func(t *testing.T) {
		// An ed25519 key blob: length-prefixed type, then the 32-byte key.
		good := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHXkPYdtsvyrTtVJVQ44Bv3aN4kPz5MWd1bwY9x2Jq5q owner@laptop"
		expectProblems(t, `apiVersion: ssbuild/v1
name: t
installer:
  hosts: [{name: h1}]
  sshKeys:
    - "`+good+`"
    - "ssh-dss AAAAB3NzaC1kc3M= old"
    - "ssh-ed25519 not-base64!"
    - "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHXkPYdtsvyrTtVJVQ44Bv3aN4kPz5MWd1bwY9x2Jq5q"
    - "command=\"/bin/sh\" `+good+`"
    - "`+good+`\n`+good+`"
    - "`+good+` `+good+`"
    - "`+good+`\r"
`,
			`t.yaml:7:7: installer.sshKeys[1]: not an SSH public key (want "ssh-ed25519 AAAA... comment", as in ~/.ssh/id_ed25519.pub)`,
			`t.yaml:8:7: installer.sshKeys[2]: the ssh-ed25519 key's data is not valid base64; copy the whole line from the .pub file`,
			`t.yaml:9:7: installer.sshKeys[3]: the key data does not match its type ssh-rsa; copy the whole line from the .pub file`,
			`t.yaml:10:7: installer.sshKeys[4]: starts with options before the key type; write only the key, from its type on (ssh-ed25519 AAAA... comment)`,
			`t.yaml:11:7: installer.sshKeys[5]: holds more than one line; write one key per entry (a YAML | block keeps line breaks)`,
			`t.yaml:12:7: installer.sshKeys[6]: holds more than one key; write one key per entry`,
			`t.yaml:13:7: installer.sshKeys[7]: holds more than one line; write one key per entry (a YAML | block keeps line breaks)`)
	})
	t.Run("image source", func(t *testing.T) {
		expectProblems(t, base+`image:
  source: {suite: Jammy Jellyfish, mirror: "ftp://mirror", sha256: abc}
`,
			`t.yaml:7:19: image.source.suite: "Jammy Jellyfish" is not a suite name (like jammy or bookworm)`,
			`t.yaml:7:44: image.source.mirror: "ftp://mirror" is not a URL (http, https, file)`,
			`t.yaml:7:68: image.source.sha256: only used with kind tarball; remove it or set kind: tarball`,
			`t.yaml:7:68: image.source.sha256: "abc" is not a sha256 (64 lower-case hex digits)`)
		expectProblems(t, base+`image:
  source: {kind: tarball, suite: jammy}
`,
			`t.yaml:7:11: image.source.tarball: missing; kind tarball needs a tarball path or URL`,
			`t.yaml:7:11: image.source.sha256: missing; a tarball must be pinned by its sha256 (64 hex digits)`,
			`t.yaml:7:34: image.source.suite: only used with kind debootstrap; remove it or set kind: debootstrap`)
		expectProblems(t, base+`image:
  source: {tarball: "https:///rootfs.tar", sha256: `+strings.Repeat("a", 64)+`}
`,
			`t.yaml:7:21: image.source.tarball: "https:///rootfs.tar" is not a URL (http, https)`)
	})
	t.Run("packages and images", func(t *testing.T) {
		expectProblems(t, base+`image:
  packages: [docker.io, Docker, docker.io]
  registryMirror: registry.local
  dockerImages:
    - ref: "Ghost:5"
    - {ref: ghost:5, digest: "sha256:1234"}
    - {ref: ghost:5}
  reproducible: {sourceDateEpoch: -5}
  output: {formats: []}
`,
			`t.yaml:7:25: image.packages[1]: "Docker" is not a package name (lower-case letters, digits, '+', '-', '.')`,
			`t.yaml:7:33: image.packages[2]: "docker.io" is already listed at image.packages[0]`,
			`t.yaml:8:19: image.registryMirror: "registry.local" is not a URL (http, https)`,
			`t.yaml:10:12: image.dockerImages[0].ref: "Ghost:5" is not an image reference (like ghost:5.82.2-alpine or registry.example.com/team/app:1.0)`,
			`t.yaml:11:30: image.dockerImages[1].digest: "sha256:1234" is not a digest (sha256: followed by 64 lower-case hex digits)`,
			`t.yaml:12:13: image.dockerImages[2].ref: "ghost:5" is already listed at image.dockerImages[1]`,
			`t.yaml:13:35: image.reproducible.sourceDateEpoch: -5 is too small (at least 0)`,
			`t.yaml:14:21: image.output.formats: lists no format; write container, vm or both`)
	})
	t.Run("vm needs a kernel", func(t *testing.T) {
		expectProblems(t, base+"image:\n  packages: [docker.io]\n  output: {formats: [container, vm]}\n",
			`t.yaml:7:13: image.packages: lists no kernel, but a VM image boots its own: add linux-virtual (Ubuntu) or linux-image-amd64 (Debian), or drop vm from image.output.formats`)
	})
	t.Run("chainstate", func(t *testing.T) {
		expectProblems(t, base+`image:
  chainstate: {network: signet, kind: assumeutxo, source: utxo.dat, sha256: XYZ}
deployments:
  - {name: p, chain: mainnet, primaryDomain: example.com}
`,
			`t.yaml:7:25: image.chainstate.network: no deployment runs on signet (deployments: p on mainnet); the chainstate would never be used`,
			`t.yaml:7:77: image.chainstate.sha256: "XYZ" is not a sha256 (64 lower-case hex digits)`)
		expectProblems(t, base+"image:\n  chainstate: {network: mainnet}\n",
			`t.yaml:7:15: image.chainstate.kind: missing; this field is required`,
			`t.yaml:7:15: image.chainstate.source: missing; this field is required`)
	})
	t.Run("cluster", func(t *testing.T) {
		expectProblems(t, base+`cluster:
  name: Prod Cluster
  initiator: nuc9
  secret: {file: cluster.secret, generate: true}
  registrationPort: 8443
  storage: {pool: "ss base"}
  networks:
    - {name: a-very-long-bridge-name}
    - {name: lan, type: macvlan}
    - {name: lan, type: macvlan, parent: "eth 0", ipv4: auto}
    - {name: br1, ipv4: 10.0.0.1/31, parent: eth0}
`,
			`t.yaml:7:9: cluster.name: "Prod Cluster" is not a valid name (lower-case letters, digits and dashes)`,
			`t.yaml:8:14: cluster.initiator: "nuc9" is not one of installer.hosts (h1)`,
			`t.yaml:9:11: cluster.secret: has both file and generate; keep one`,
			`t.yaml:10:21: cluster.registrationPort: 8443 is LXD's own port; pick another (default 9443)`,
			`t.yaml:11:19: cluster.storage.pool: "ss base" is not a valid pool name (lower-case letters, digits and dashes)`,
			`t.yaml:13:14: cluster.networks[0].name: "a-very-long-bridge-name" is not an interface name (at most 15 letters, digits, '-', '_' or '.')`,
			`t.yaml:14:7: cluster.networks[1].parent: missing; a macvlan network needs the host interface it attaches to`,
			`t.yaml:15:14: cluster.networks[2].name: "lan" is already the name of cluster.networks[1]`,
			`t.yaml:15:42: cluster.networks[2].parent: "eth 0" is not an interface name`,
			`t.yaml:15:57: cluster.networks[2].ipv4: only used with type bridge (a macvlan gets addresses from the LAN)`,
			`t.yaml:16:25: cluster.networks[3].ipv4: "10.0.0.1/31" is not auto, none or an IPv4 address with a prefix of /30 or wider (like 10.9.9.1/24)`,
			`t.yaml:16:46: cluster.networks[3].parent: only used with type macvlan`)
		expectProblems(t, base+"cluster:\n  registrationPort: 70000\n",
			`t.yaml:7:21: cluster.registrationPort: 70000 is out of range (1 to 65535)`)
	})
	t.Run("deployments", func(t *testing.T) {
		expectProblems(t, base+`deployments:
  - name: Prod
    primaryDomain: example
  - name: p
    chain: mainnet
    primaryDomain: example.com
    sites:
      - {domain: shop.example.com, languages: [en, EN, en], btcpayAltNames: [pay, "pay.me"], services: [ghost, ghost]}
  - name: p
    chain: mainnet
    primaryDomain: example.org
    sites:
      - {domain: shop.example.com}
`,
			`t.yaml:7:11: deployments[0].name: "Prod" is not a valid name (lower-case letters, digits and dashes)`,
			`t.yaml:8:20: deployments[0].primaryDomain: "example" is not a domain name (lower-case labels separated by dots, like example.com)`,
			`t.yaml:13:52: deployments[1].sites[0].languages[1]: "EN" is not a two-letter language code (ISO 639-1, like en or es)`,
			`t.yaml:13:56: deployments[1].sites[0].languages[2]: "en" is already listed at deployments[1].sites[0].languages[0]`,
			`t.yaml:13:83: deployments[1].sites[0].btcpayAltNames[1]: "pay.me" is not a host name label (like pay or tip)`,
			`t.yaml:13:112: deployments[1].sites[0].services[1]: "ghost" is already listed at deployments[1].sites[0].services[0]`,
			`t.yaml:14:11: deployments[2].name: project "p-mainnet" is already made by deployments[1]; change name or chain`,
			`t.yaml:18:18: deployments[2].sites[0].domain: "shop.example.com" is already a site at deployments[1].sites[0].domain; a domain can be served once`)
	})
	t.Run("instance host", func(t *testing.T) {
		expectProblems(t, base+`deployments:
  - name: p
    primaryDomain: example.com
    instances:
      www: {host: h1}
      clams: {host: h4}
`,
			`t.yaml:11:21: deployments[0].instances.clams.host: "h4" is not one of installer.hosts (h1)`)
	})
	t.Run("nostr", func(t *testing.T) {
		expectProblems(t, base+`deployments:
  - name: p
    primaryDomain: a.example.com
    sites:
      - {domain: a.example.com, services: [nostr-relay]}
      - {domain: b.example.com, nostrOwnerPubkey: `+strings.Repeat("ab", 32)+`}
      - {domain: c.example.com, services: [nostr-relay], nostrOwnerPubkey: npub1pt5s6shsc95tped20rwcwqugup0gn4khgqaattndm393g3uc2s9svzv06x}
      - {domain: d.example.com, services: [nostr-relay], nostrOwnerPubkey: abcdef}
      - {domain: e.example.com, services: [nostr-relay], nostrOwnerPubkey: "@owner"}
`,
			`t.yaml:10:9: deployments[0].sites[0].nostrOwnerPubkey: missing; the nostr-relay service accepts only its owner's events, so it needs the owner's pubkey (npub1... or 64 hex digits)`,
			`t.yaml:11:51: deployments[0].sites[1].nostrOwnerPubkey: is set but services has no nostr-relay; add nostr-relay or remove the key`,
			`t.yaml:12:76: deployments[0].sites[2].nostrOwnerPubkey: "npub1pt5s6shsc95tped20rwcwqugup0gn4khgqaattndm393g3uc2s9svzv06x" is not a valid npub: checksum does not match (a typo?)`,
			`t.yaml:13:76: deployments[0].sites[3].nostrOwnerPubkey: "abcdef" has 6 hex digits; a pubkey has 64`,
			`t.yaml:14:76: deployments[0].sites[4].nostrOwnerPubkey: "@owner" is not a nostr pubkey (npub1... or 64 hex digits)`)
	})
	t.Run("instances", func(t *testing.T) {
		expectProblems(t, base+`deployments:
  - name: p
    primaryDomain: example.com
    instances:
      www: {cpus: 0, memory: 128MiB}
      btcpay: {disks: {root: 512MiB}}
      clams: {cpus: 512}
`,
			`t.yaml:10:19: deployments[0].instances.www.cpus: 0 is out of range (1 to 256)`,
			`t.yaml:10:30: deployments[0].instances.www.memory: 128MiB is too small (at least 256MiB)`,
			`t.yaml:11:30: deployments[0].instances.btcpay.disks.root: 512MiB is too small (at least 1GiB)`,
			`t.yaml:12:21: deployments[0].instances.clams.cpus: 512 is out of range (1 to 256)`)
	})
}

// A recipe with problems in every section reports them all, in file order.
func TestAllProblemsAtOnce(t *testing.T) {
	got := problemsOf(t, `apiVersion: ssbuild/v1
name: t
image:
  source: {kind: iso}
installer:
  hosts: [{name: h1, mac: nope}]
  layout: {os: 1GiB}
cluster:
  initiator: h9
deployments:
  - {name: p, primaryDomain: "-bad-", chain: moonnet}
`)
	if len(got) != 6 {
		t.Fatalf("want 6 problems, got %d:\n%s", len(got), strings.Join(got, "\n"))
	}
	lines := []string{"t.yaml:4:", "t.yaml:6:", "t.yaml:7:", "t.yaml:9:", "t.yaml:11:", "t.yaml:11:"}
	for i, p := range got {
		if !strings.HasPrefix(p, lines[i]) {
			t.Errorf("problem %d = %q, want it at %s", i, p, lines[i])
		}
	}
}

func TestValidateChecksTheFilesTheRecipeNames(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rootfs.tar"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "chain.dat"), nil, 0o000); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "keyring.gpg"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "r.yaml")
	text := base + `image:
  source: {kind: tarball, tarball: rootfs.tar, sha256: ` + strings.Repeat("a", 64) + `}
  chainstate: {network: signet, kind: assumeutxo, source: chain.dat}
cluster:
  secret: {file: secrets/cluster.secret}
deployments:
  - {name: d, chain: signet, primaryDomain: example.com}
`
	// A second recipe: debootstrap with a keyring that is a folder.
	path2 := filepath.Join(dir, "r2.yaml")
	if err := os.WriteFile(path2, []byte(base+"image:\n  source: {kind: debootstrap, keyring: keyring.gpg, mirror: \"file://"+dir+"/mirror\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err2 := Validate(path2)
	if ps := Problems(err2); len(ps) != 2 || ps[0].String() != path2+":7:40: image.source.keyring: "+filepath.Join(dir, "keyring.gpg")+" is a folder, not a file (the archive keyring)" ||
		ps[1].String() != path2+":7:61: image.source.mirror: "+filepath.Join(dir, "mirror")+" does not exist (the archive mirror); relative paths start at the recipe's folder" {
		t.Errorf("keyring folder, mirror folder missing: %v", err2)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// Open does not look at files: deploy runs where they need not be.
	if _, err := Open(path); err != nil {
		t.Fatalf("Open: %v", err)
	}
	var called bool
	_, err := Validate(path, func(r *Recipe, rep Reporter) {
		called = true
		rep.At("installer.hosts[0]", "a check from %s", "elsewhere")
	})
	var got []string
	for _, p := range Problems(err) {
		got = append(got, p.String())
	}
	want := []string{
		path + `:5:7: installer.hosts[0]: a check from elsewhere`,
	}
	if os.Getuid() != 0 { // root reads a 0000 file
		want = append(want, path+`:8:59: image.chainstate.source: `+filepath.Join(dir, "chain.dat")+` cannot be read by this user (the chainstate): fix its permissions or owner`)
	}
	want = append(want, path+`:10:18: cluster.secret.file: `+filepath.Join(dir, "secrets/cluster.secret")+` does not exist (the cluster secret); relative paths start at the recipe's folder`)
	if !called || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems differ\n got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// A backup recipient must be an age public key: a private key or a typo is
// refused at its entry (a backup nobody can read is worse than none).
func TestBackupRecipients(t *testing.T) {
	expectProblems(t, base+"backup:\n  recipients:\n    - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n    - AGE-SECRET-KEY-1QQQ\n    - age1typo\n",
		`t.yaml:9:7: backup.recipients[1]: this is a private key: put its public key here (age-keygen -y KEYFILE) and keep the private key off the cluster`,
		`t.yaml:10:7: backup.recipients[2]: not an age public key (age1..., from age-keygen -y KEYFILE)`)
}

// The host OS: Ubuntu hosts get no LXD (nothing seeds its snap), a Debian
// host OS that builds ZFS needs contrib, and an unwritten installer.source
// gives Debian 12 hosts with LXD and ZFS, also under an Ubuntu image.
func TestHostOSSource(t *testing.T) {
	expectProblems(t, base+`  source: {suite: jammy}
  packages: [linux-generic, snapd]
`, "t.yaml:6:19: installer.source.suite: jammy hosts would get no LXD: Ubuntu ships it as a snap, which ssbuild cannot seed for an offline first boot yet; use Debian 12 hosts (installer.source: {suite: bookworm, components: [main, contrib]}), as the default recipe does")
	expectProblems(t, base+`  source: {suite: bookworm, components: [main]}
  packages: [linux-image-amd64, lxd, zfs-dkms]
`, "t.yaml:6:41: installer.source.components: zfs-dkms is in Debian's contrib: add contrib to installer.source.components")
	r, err := Parse("t.yaml", []byte(base), "")
	if err != nil {
		t.Fatal(err)
	}
	src, pkgs := r.Installer.Source, strings.Join(r.Installer.Packages, " ")
	if r.Image.Source.Suite != "jammy" || src.Suite != "bookworm" || strings.Join(src.Components, ",") != "main,contrib" ||
		!strings.Contains(pkgs, "lxd") || !strings.Contains(pkgs, "zfs-dkms") {
		t.Errorf("a minimal recipe's hosts: %+v with %s (image %s); want Debian bookworm main,contrib with lxd and zfs-dkms", src, pkgs, r.Image.Source.Suite)
	}
}

// Scheduled restore tests need both fields: every how many hours, and the
// backup folder as an absolute path (where the members mount it).
func TestBackupRestoreTest(t *testing.T) {
	expectProblems(t, base+"backup:\n  restoreTest:\n    from: /mnt/backups\n",
		`t.yaml:8:5: backup.restoreTest.hours: required with from: every how many hours to test (1-8760)`)
	expectProblems(t, base+"backup:\n  restoreTest:\n    hours: 24\n    from: backups\n",
		`t.yaml:9:11: backup.restoreTest.from: want the absolute path of the backup folder as the members mount it`)
	expectProblems(t, base+"backup:\n  restoreTest:\n    hours: 9000\n    from: /mnt/backups\n",
		`t.yaml:8:12: backup.restoreTest.hours: 9000 is out of range (1 to 8760)`)
}
