package recipes

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"filippo.io/age"
)

var (
	labelRe     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	ifaceRe     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)
	packageRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	languageRe  = regexp.MustCompile(`^[a-z]{2}$`)
	sha256Re    = regexp.MustCompile(`^[0-9a-f]{64}$`)
	digestRe    = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	imageRefRe  = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$`)
	hexPubkeyRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
	tldRe       = regexp.MustCompile(`^[a-z]{2,63}$|^xn--`)
)

// validate checks values and relations between fields, after defaults.
// Type errors, unknown keys and enums were already reported by the decoder.
func validate(r *Recipe, rep *report) {
	if r.APIVersion != "" && r.APIVersion != APIVersion {
		rep.at("apiVersion", "%q is not supported (this ssbuild reads %s)", r.APIVersion, APIVersion)
	}
	if r.Name != "" && !labelRe.MatchString(r.Name) {
		rep.at("name", "%q is not a valid name (lower-case letters, digits and dashes, at most 63)", r.Name)
	}
	validateImage(r, rep)
	validateInstaller(&r.Installer, rep)
	validateCluster(r, rep)
	validateDeployments(r, rep)
	validateUniqueMACs(r, rep)
	checkPathsStayInside(r, rep)
	if rt := r.Backup.RestoreTest; rt.Enabled() && !filepath.IsAbs(rt.From) {
		rep.at("backup.restoreTest.from", "want the absolute path of the backup folder as the members mount it")
	} else if !rt.Enabled() && rt.From != "" {
		rep.at("backup.restoreTest.hours", "required with from: every how many hours to test (1-8760)")
	}
	for i, k := range r.Backup.Recipients {
		// The value is never quoted: a pasted private key must not be echoed.
		switch _, err := age.ParseX25519Recipient(k); {
		case strings.HasPrefix(strings.ToUpper(k), "AGE-SECRET-KEY-"):
			rep.at(indexPath("backup.recipients", i), "this is a private key: put its public key here (age-keygen -y KEYFILE) and keep the private key off the cluster")
		case err != nil:
			rep.at(indexPath("backup.recipients", i), "not an age public key (age1..., from age-keygen -y KEYFILE)")
		}
	}
}

func validateImage(r *Recipe, rep *report) {
	img := &r.Image
	src := img.Source
	validateSource(rep, "image.source", src)
	checkPackages(rep, "image.packages", img.Packages)
	checkPackages(rep, "installer.packages", r.Installer.Packages)
	if img.RegistryMirror != "" {
		checkURL(rep, "image.registryMirror", img.RegistryMirror, "http", "https")
	}
	seen := map[string]int{}
	for i, di := range img.DockerImages {
		p := indexPath("image.dockerImages", i)
		if di.Ref != "" && !imageRefRe.MatchString(di.Ref) {
			rep.at(p+".ref", "%q is not an image reference (like ghost:5.82.2-alpine or registry.example.com/team/app:1.0)", di.Ref)
		}
		if di.Digest != "" && !digestRe.MatchString(di.Digest) {
			rep.at(p+".digest", "%q is not a digest (sha256: followed by 64 lower-case hex digits)", di.Digest)
		}
		if j, dup := seen[di.Ref]; dup {
			rep.at(p+".ref", "%q is already listed at image.dockerImages[%d]", di.Ref, j)
		} else {
			seen[di.Ref] = i
		}
	}
	if cs := img.Chainstate; cs != nil {
		checkSHA256(rep, "image.chainstate.sha256", cs.SHA256)
		if cs.Network != "" && len(r.Deployments) > 0 && !anyChain(r.Deployments, cs.Network) {
			rep.at("image.chainstate.network", "no deployment runs on %s (deployments: %s); the chainstate would never be used", cs.Network, chainList(r.Deployments))
		}
	}
	if slices.Contains(img.Output.Formats, "vm") && !slices.ContainsFunc(img.Packages, isKernelPackage) {
		rep.at("image.packages", "lists no kernel, but a VM image boots its own: add linux-virtual (Ubuntu) or linux-image-amd64 (Debian), or drop vm from image.output.formats")
	}
	if len(img.Output.Formats) == 0 {
		rep.at("image.output.formats", "lists no format; write container, vm or both")
	}
}

// validateSource checks a root filesystem source at prefix (image.source,
// installer.source).
func validateSource(rep *report, prefix string, src Source) {
	switch src.Kind {
	case "debootstrap":
		checkURL(rep, prefix+".mirror", src.Mirror, "http", "https", "file")
		if src.Suite != "" && !labelRe.MatchString(src.Suite) {
			rep.at(prefix+".suite", "%q is not a suite name (like jammy or bookworm)", src.Suite)
		}
		for _, f := range []string{"tarball", "sha256"} {
			if rep.written(prefix + "." + f) {
				rep.at(prefix+"."+f, "only used with kind tarball; remove it or set kind: tarball")
			}
		}
	case "tarball":
		if src.Tarball == "" {
			rep.at(prefix+".tarball", "missing; kind tarball needs a tarball path or URL")
		} else if strings.Contains(src.Tarball, "://") {
			checkURL(rep, prefix+".tarball", src.Tarball, "http", "https")
		}
		if src.SHA256 == "" {
			rep.at(prefix+".sha256", "missing; a tarball must be pinned by its sha256 (64 hex digits)")
		}
		for _, f := range []string{"suite", "mirror", "keyring", "variant", "components"} {
			if rep.written(prefix + "." + f) {
				rep.at(prefix+"."+f, "only used with kind debootstrap; remove it or set kind: debootstrap")
			}
		}
	}
	checkSHA256(rep, prefix+".sha256", src.SHA256)
}

// writtenOr is path when the recipe writes it, else fallback (a position
// must point at something in the file).
func writtenOr(rep *report, path, fallback string) string {
	if rep.written(path) {
		return path
	}
	return fallback
}

func validateInstaller(in *Installer, rep *report) {
	checkTarget(rep, "installer.target", in.Target)
	if rep.written("installer.source") {
		validateSource(rep, "installer.source", in.Source)
	}
	if src := in.Source; src.Kind == "debootstrap" {
		if src.IsDebian() && slices.Contains(in.Packages, "zfs-dkms") && !slices.Contains(src.Components, "contrib") {
			rep.at(writtenOr(rep, "installer.source.components", "installer.packages"), "zfs-dkms is in Debian's contrib: add contrib to installer.source.components")
		}
		if !src.IsDebian() && !slices.Contains(in.Packages, "lxd") {
			// Ubuntu's LXD is a snap; nothing seeds it for an offline first
			// boot yet, so such hosts would come up without a cluster daemon.
			rep.at(writtenOr(rep, "installer.source.suite", writtenOr(rep, "installer.source", "image.source.suite")),
				"%s hosts would get no LXD: Ubuntu ships it as a snap, which ssbuild cannot seed for an offline first boot yet; use Debian 12 hosts (installer.source: {suite: bookworm, components: [main, contrib]}), as the default recipe does", src.Suite)
		}
	}
	l := in.Layout
	if need := l.Need(); need > l.MinDisk {
		rep.at("installer.layout.os", "esp %s + os %s + minZFS %s (+2MiB for GPT) = %s do not fit on the smallest allowed disk (minDisk %s); lower os or raise minDisk",
			l.ESP, l.OS, l.MinZFS, need, l.MinDisk)
	}
	names := map[string]int{}
	for i, h := range in.Hosts {
		p := indexPath("installer.hosts", i)
		if h.Name != "" && !labelRe.MatchString(h.Name) {
			rep.at(p+".name", "%q is not a host name (lower-case letters, digits and dashes, at most 63)", h.Name)
		}
		if j, dup := names[h.Name]; dup && h.Name != "" {
			rep.at(p+".name", "%q is already the name of installer.hosts[%d]", h.Name, j)
		} else {
			names[h.Name] = i
		}
		var prefix netip.Prefix
		if h.Address != "" {
			var err error
			if prefix, err = netip.ParsePrefix(h.Address); err != nil || !prefix.Addr().Is4() {
				rep.at(p+".address", "%q is not an IPv4 address with prefix (like 192.168.1.11/24)", h.Address)
			}
		}
		if h.Gateway != "" {
			gw, err := netip.ParseAddr(h.Gateway)
			switch {
			case err != nil || !gw.Is4():
				rep.at(p+".gateway", "%q is not an IPv4 address", h.Gateway)
			case h.Address == "":
				rep.at(p+".gateway", "a gateway needs a static address; set address or remove gateway")
			case prefix.IsValid() && !prefix.Masked().Contains(gw):
				rep.at(p+".gateway", "%s is not in the host's subnet %s", gw, prefix.Masked())
			}
		}
		if h.Target != nil {
			checkTarget(rep, p+".target", *h.Target)
		}
	}
	// Every host needs a static address (the hosts find each other by
	// them); handoff/config owns that rule: config.CheckRecipe, run by
	// Validate, reports it at each host.
	if len(in.Hosts) == 0 {
		if rep.written("installer.hosts") {
			rep.at("installer.hosts", "lists no host; a cluster needs at least one")
		} else {
			rep.at("installer.hosts", "missing; list the hosts this installer installs (at least one)")
		}
	}
	for i, k := range in.SSHKeys {
		if err := checkAuthorizedKey(k); err != nil {
			rep.at(indexPath("installer.sshKeys", i), "%v", err)
		}
	}
}

func checkTarget(rep *report, path string, t Target) {
	set := 0
	for _, v := range []string{t.Serial, t.WWID, t.Path} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		rep.at(path, "names the disk more than one way; keep one of serial, wwid or path (or none for auto)")
	}
	if t.Path != "" && !strings.HasPrefix(t.Path, "/dev/") {
		rep.at(path+".path", "%q is not a device path (it must start with /dev/)", t.Path)
	}
}

func validateCluster(r *Recipe, rep *report) {
	c := &r.Cluster
	// Unless written, the name is the recipe's, whose problem is reported once.
	if rep.written("cluster.name") && !labelRe.MatchString(c.Name) {
		rep.at("cluster.name", "%q is not a valid name (lower-case letters, digits and dashes)", c.Name)
	}
	if c.Initiator != "" && len(r.Installer.Hosts) > 0 && !hasHost(r.Installer.Hosts, c.Initiator) {
		rep.at("cluster.initiator", "%q is not one of installer.hosts (%s)", c.Initiator, hostList(r.Installer.Hosts))
	}
	if c.Secret.File != "" && c.Secret.Generate {
		rep.at("cluster.secret", "has both file and generate; keep one")
	}
	if c.RegistrationPort == 8443 {
		rep.at("cluster.registrationPort", "8443 is LXD's own port; pick another (default %d)", defaultRegistration)
	}
	if !labelRe.MatchString(c.Storage.Pool) {
		rep.at("cluster.storage.pool", "%q is not a valid pool name (lower-case letters, digits and dashes)", c.Storage.Pool)
	}
	names := map[string]int{}
	for i, n := range c.Networks {
		p := indexPath("cluster.networks", i)
		if n.Name != "" && !ifaceRe.MatchString(n.Name) {
			rep.at(p+".name", "%q is not an interface name (at most 15 letters, digits, '-', '_' or '.')", n.Name)
		}
		if j, dup := names[n.Name]; dup && n.Name != "" {
			rep.at(p+".name", "%q is already the name of cluster.networks[%d]", n.Name, j)
		} else {
			names[n.Name] = i
		}
		switch n.Type {
		case "bridge":
			if n.IPv4 != "auto" && n.IPv4 != "none" {
				if pr, err := netip.ParsePrefix(n.IPv4); err != nil || !pr.Addr().Is4() || pr.Bits() > 30 {
					rep.at(p+".ipv4", "%q is not auto, none or an IPv4 address with a prefix of /30 or wider (like 10.9.9.1/24)", n.IPv4)
				}
			}
			if n.Parent != "" {
				rep.at(p+".parent", "only used with type macvlan")
			}
		case "macvlan":
			if n.Parent == "" {
				rep.at(p+".parent", "missing; a macvlan network needs the host interface it attaches to")
			} else if !ifaceRe.MatchString(n.Parent) {
				rep.at(p+".parent", "%q is not an interface name", n.Parent)
			}
			if n.IPv4 != "" {
				rep.at(p+".ipv4", "only used with type bridge (a macvlan gets addresses from the LAN)")
			}
		}
	}
}

func validateDeployments(r *Recipe, rep *report) {
	projects := map[string]string{}
	domains := map[string]string{} // domain -> path where it was first given
	for i := range r.Deployments {
		d := &r.Deployments[i]
		p := indexPath("deployments", i)
		if d.Name != "" && !labelRe.MatchString(d.Name) {
			rep.at(p+".name", "%q is not a valid name (lower-case letters, digits and dashes)", d.Name)
		}
		if first, dup := projects[d.Project()]; dup && d.Name != "" {
			rep.at(p+".name", "project %q is already made by %s; change name or chain", d.Project(), first)
		} else {
			projects[d.Project()] = p
		}
		if d.PrimaryDomain != "" {
			checkDomain(rep, p+".primaryDomain", d.PrimaryDomain)
		}
		for _, role := range d.Instances.Roles() {
			if h := role.Instance.Host; h != "" && len(r.Installer.Hosts) > 0 && !hasHost(r.Installer.Hosts, h) {
				rep.at(p+".instances."+role.Name+".host", "%q is not one of installer.hosts (%s)", h, hostList(r.Installer.Hosts))
			}
		}
		for j, s := range d.Sites {
			sp := indexPath(p+".sites", j)
			if s.Domain == "" {
				continue // reported as missing by the decoder
			}
			if rep.written(sp) { // the primary's site, when added by default, was checked as primaryDomain
				checkDomain(rep, sp+".domain", s.Domain)
			}
			if first, dup := domains[s.Domain]; dup {
				rep.at(sp+".domain", "%q is already a site at %s; a domain can be served once", s.Domain, first)
			} else {
				domains[s.Domain] = sp + ".domain"
			}
			checkUnique(rep, sp+".languages", s.Languages, func(l string) string {
				if !languageRe.MatchString(l) {
					return fmt.Sprintf("%q is not a two-letter language code (ISO 639-1, like en or es)", l)
				}
				return ""
			})
			checkUnique(rep, sp+".btcpayAltNames", s.BTCPayAltNames, func(n string) string {
				if !labelRe.MatchString(n) {
					return fmt.Sprintf("%q is not a host name label (like pay or tip)", n)
				}
				return ""
			})
			checkUnique(rep, sp+".services", s.Services, func(string) string { return "" })
			switch {
			case s.Has("nostr-relay") && s.NostrOwner == "":
				rep.at(sp+".nostrOwnerPubkey", "missing; the nostr-relay service accepts only its owner's events, so it needs the owner's pubkey (npub1... or 64 hex digits)")
			case s.NostrOwner != "" && !s.Has("nostr-relay"):
				rep.at(sp+".nostrOwnerPubkey", "is set but services has no nostr-relay; add nostr-relay or remove the key")
			case s.NostrOwner != "":
				if err := checkNostrPubkey(s.NostrOwner); err != nil {
					rep.at(sp+".nostrOwnerPubkey", "%v", err)
				}
			}
		}
	}
}

// validateUniqueMACs checks that no MAC is pinned twice, hosts and
// instances together: two NICs with one MAC break DHCP reservations.
func validateUniqueMACs(r *Recipe, rep *report) {
	seen := map[MAC]string{}
	check := func(path string, m MAC) {
		if m == "" {
			return
		}
		if first, dup := seen[m]; dup {
			rep.at(path, "%s is already the MAC of %s; every NIC needs its own", m, first)
			return
		}
		seen[m] = path
	}
	for i, h := range r.Installer.Hosts {
		check(indexPath("installer.hosts", i)+".mac", h.MAC)
	}
	for i := range r.Deployments {
		for _, role := range r.Deployments[i].Instances.Roles() {
			check(indexPath("deployments", i)+".instances."+role.Name+".mac", role.Instance.MAC)
		}
	}
}

// isKernelPackage reports whether a package installs a bootable kernel.
func isKernelPackage(p string) bool {
	return strings.HasPrefix(p, "linux-image-") || p == "linux-generic" || p == "linux-virtual" || p == "linux-kvm"
}

func checkDomain(rep *report, path, d string) {
	labels := strings.Split(d, ".")
	ok := len(d) <= 253 && len(labels) >= 2
	for _, l := range labels {
		ok = ok && labelRe.MatchString(l)
	}
	if ok && !tldRe.MatchString(labels[len(labels)-1]) {
		ok = false
	}
	if !ok {
		rep.at(path, "%q is not a domain name (lower-case labels separated by dots, like example.com)", d)
	}
}

func checkURL(rep *report, path, raw string, schemes ...string) {
	u, err := url.Parse(raw)
	if err == nil {
		for _, s := range schemes {
			if u.Scheme == s && (u.Host != "" || s == "file") {
				return
			}
		}
	}
	rep.at(path, "%q is not a URL (%s)", raw, strings.Join(schemes, ", "))
}

func checkSHA256(rep *report, path, v string) {
	if v != "" && !sha256Re.MatchString(v) {
		rep.at(path, "%q is not a sha256 (64 lower-case hex digits)", v)
	}
}

func checkPackages(rep *report, path string, pkgs []string) {
	checkUnique(rep, path, pkgs, func(p string) string {
		if !packageRe.MatchString(p) {
			return fmt.Sprintf("%q is not a package name (lower-case letters, digits, '+', '-', '.')", p)
		}
		return ""
	})
}

// checkUnique reports bad values (bad returns the message, or "") and
// repeated ones in a list.
func checkUnique(rep *report, path string, list []string, bad func(string) string) {
	seen := map[string]int{}
	for i, v := range list {
		p := indexPath(path, i)
		if msg := bad(v); msg != "" {
			rep.at(p, "%s", msg)
		}
		if j, dup := seen[v]; dup {
			rep.at(p, "%q is already listed at %s", v, indexPath(path, j))
		} else {
			seen[v] = i
		}
	}
}

var sshKeyTypes = map[string]bool{
	"ssh-ed25519": true, "ssh-rsa": true, "ecdsa-sha2-nistp256": true, "ecdsa-sha2-nistp384": true,
	"ecdsa-sha2-nistp521": true, "sk-ssh-ed25519@openssh.com": true, "sk-ecdsa-sha2-nistp256@openssh.com": true,
}

// checkAuthorizedKey checks the form of a public key line: type, base64 blob
// whose first field repeats the type, optional comment. One key per entry,
// with no options in front: the entry becomes one authorized_keys line, and
// options (command=, from=) would change what the key may do unseen.
func checkAuthorizedKey(line string) error {
	if strings.ContainsAny(line, "\n\r") {
		return fmt.Errorf("holds more than one line; write one key per entry (a YAML | block keeps line breaks)")
	}
	f := strings.Fields(line)
	if len(f) > 0 && !sshKeyTypes[f[0]] && slices.ContainsFunc(f[1:], func(s string) bool { return sshKeyTypes[s] }) {
		return fmt.Errorf("starts with options before the key type; write only the key, from its type on (ssh-ed25519 AAAA... comment)")
	}
	if len(f) < 2 || !sshKeyTypes[f[0]] {
		return fmt.Errorf("not an SSH public key (want \"ssh-ed25519 AAAA... comment\", as in ~/.ssh/id_ed25519.pub)")
	}
	if slices.ContainsFunc(f[2:], func(s string) bool { return sshKeyTypes[s] }) {
		return fmt.Errorf("holds more than one key; write one key per entry")
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil || len(blob) < 4 {
		return fmt.Errorf("the %s key's data is not valid base64; copy the whole line from the .pub file", f[0])
	}
	n := binary.BigEndian.Uint32(blob)
	if uint64(n)+4 > uint64(len(blob)) || string(blob[4:4+n]) != f[0] {
		return fmt.Errorf("the key data does not match its type %s; copy the whole line from the .pub file", f[0])
	}
	return nil
}

// checkNostrPubkey accepts 64 hex digits or an npub1 bech32 string with a
// valid checksum holding 32 bytes.
func checkNostrPubkey(k string) error {
	if hexPubkeyRe.MatchString(k) {
		return nil
	}
	if strings.HasPrefix(k, "npub1") {
		data, err := bech32Decode(k, "npub")
		if err != nil {
			return fmt.Errorf("%q is not a valid npub: %v", k, err)
		}
		if len(data) != 32 {
			return fmt.Errorf("%q holds %d bytes, a pubkey is 32", k, len(data))
		}
		return nil
	}
	if _, err := hex.DecodeString(k); err == nil {
		return fmt.Errorf("%q has %d hex digits; a pubkey has 64", k, len(k))
	}
	return fmt.Errorf("%q is not a nostr pubkey (npub1... or 64 hex digits)", k)
}

func anyChain(ds []Deployment, chain string) bool {
	for _, d := range ds {
		if d.Chain == chain {
			return true
		}
	}
	return false
}

func chainList(ds []Deployment) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, d.Name+" on "+d.Chain)
	}
	return strings.Join(parts, ", ")
}

func hasHost(hs []Host, name string) bool {
	for _, h := range hs {
		if h.Name == name {
			return true
		}
	}
	return false
}

func hostList(hs []Host) string {
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.Name
	}
	return strings.Join(names, ", ")
}
