package recipes

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Stage is one stage of the pipeline with what it will do, in order.
type Stage struct {
	Name  string   `json:"name"`
	Steps []string `json:"steps"`
}

// Plan describes, in words, what each stage of the pipeline will build or
// deploy from a (loaded, valid) recipe.
func Plan(r *Recipe) []Stage {
	return []Stage{imagePlan(r), installerPlan(r), clusterPlan(r), deployPlan(r)}
}

// WritePlan prints a plan for people.
func WritePlan(w io.Writer, r *Recipe, stages []Stage) {
	fmt.Fprintf(w, "Plan for recipe %s (%s)\n", r.Name, r.File)
	if r.Description != "" {
		fmt.Fprintf(w, "  %s\n", r.Description)
	}
	for i, s := range stages {
		fmt.Fprintf(w, "\n%d. %s\n", i+1, s.Name)
		for _, step := range s.Steps {
			fmt.Fprintf(w, "   - %s\n", step)
		}
	}
}

func imagePlan(r *Recipe) Stage {
	img := r.Image
	src := img.Source
	var steps []string
	if src.Kind == "tarball" {
		steps = append(steps, fmt.Sprintf("unpack root filesystem from %s after checking sha256 %s", src.Tarball, src.SHA256))
	} else {
		steps = append(steps, fmt.Sprintf("debootstrap %s (%s, components %s) from %s",
			src.Suite, src.Variant, strings.Join(src.Components, ","), src.Mirror))
	}
	steps = append(steps, fmt.Sprintf("install %d packages: %s", len(img.Packages), strings.Join(img.Packages, ", ")))
	if img.RegistryMirror != "" {
		steps = append(steps, "use Docker registry mirror "+img.RegistryMirror)
	}
	if n := len(img.DockerImages); n > 0 {
		var refs []string
		pinned := 0
		for _, d := range img.DockerImages {
			refs = append(refs, d.Ref)
			if d.Digest != "" {
				pinned++
			}
		}
		steps = append(steps, fmt.Sprintf("pre-load %d Docker images (%d pinned by digest): %s", n, pinned, strings.Join(refs, ", ")))
	}
	if cs := img.Chainstate; cs != nil {
		steps = append(steps, fmt.Sprintf("pack %s chainstate (%s) from %s with a per-file sha256 manifest", cs.Network, cs.Kind, r.Path(cs.Source)))
	} else {
		steps = append(steps, "no chainstate pre-load: nodes sync from the network")
	}
	steps = append(steps, "write LXD image formats: "+strings.Join(img.Output.Formats, ", ")+", with SHA256SUMS and a build manifest")
	return Stage{Name: "image: the base image every site instance boots from", Steps: steps}
}

func installerPlan(r *Recipe) Stage {
	in := r.Installer
	l := in.Layout
	target := "auto (the largest blank disk that is neither removable nor on USB or SD/MMC, and not the installer stick; a disk holding data only with wipe)"
	if !in.Target.Auto() {
		target = describeTarget(in.Target)
	}
	wipe := "refuse a disk that already holds data (partitions, filesystems, LUKS, RAID, any non-zero byte in its first or last MiB)"
	if in.Wipe {
		wipe = "WIPE a disk that already holds data (partitions, filesystems, LUKS, RAID, any non-zero byte in its first or last MiB)"
	}
	var hosts []string
	for _, h := range in.Hosts {
		s := h.Name
		var extra []string
		if h.Address != "" {
			extra = append(extra, h.Address)
		}
		if h.MAC != "" {
			extra = append(extra, string(h.MAC))
		}
		if h.Target != nil {
			extra = append(extra, "disk "+describeTarget(*h.Target))
		}
		if len(extra) > 0 {
			s += " (" + strings.Join(extra, ", ") + ")"
		}
		hosts = append(hosts, s)
	}
	src := "debootstrap " + in.Source.Suite + " (components " + strings.Join(in.Source.Components, ",") + ") from " + in.Source.Mirror
	if in.Source.Kind == "tarball" {
		src = "root filesystem from " + in.Source.Tarball
	}
	zfs := "no ZFS module built (zfs-dkms is not in installer.packages)"
	if slices.Contains(in.Packages, "zfs-dkms") {
		zfs = "build the ZFS module (zfs-dkms) for the host kernel, keep it as a package, remove the compiler"
	}
	return Stage{Name: "installer: the USB image that installs the cluster hosts", Steps: []string{
		"host OS: " + src,
		fmt.Sprintf("host OS packages: %s", strings.Join(in.Packages, ", ")),
		zfs,
		fmt.Sprintf("install %d hosts: %s", len(in.Hosts), strings.Join(hosts, ", ")),
		"target disk: " + target + "; " + wipe,
		fmt.Sprintf("partitions: ESP %s | OS %s ext4 | rest ZFS (at least %s); smallest disk %s", l.ESP, l.OS, l.MinZFS, l.MinDisk),
		fmt.Sprintf("%d SSH keys for the owner; then %s", len(in.SSHKeys), in.AfterInstall),
	}}
}

func describeTarget(t Target) string {
	switch {
	case t.Serial != "":
		return "serial " + t.Serial
	case t.WWID != "":
		return "WWID " + t.WWID
	case t.Path != "":
		return t.Path
	}
	return "auto"
}

func clusterPlan(r *Recipe) Stage {
	c := r.Cluster
	var joiners []string
	for _, h := range r.Installer.Hosts {
		if h.Name != c.Initiator {
			joiners = append(joiners, h.Name)
		}
	}
	join := "no other host joins"
	if len(joiners) > 0 {
		join = strings.Join(joiners, ", ") + " join it"
	}
	secret := "a secret generated when the installer is built (stored 0600)"
	if c.Secret.File != "" {
		secret = "the secret in " + r.Path(c.Secret.File)
	}
	var nets []string
	for _, n := range c.Networks {
		s := n.Name + " (" + n.Type
		if n.IPv4 != "" {
			s += ", ipv4 " + n.IPv4
		}
		if n.Parent != "" {
			s += ", on " + n.Parent
		}
		nets = append(nets, s+")")
	}
	return Stage{Name: "cluster: first boot forms the LXD cluster", Steps: []string{
		fmt.Sprintf("cluster %s: %s bootstraps it, %s (registration on port %d)", c.Name, c.Initiator, join, c.RegistrationPort),
		"hosts prove " + secret + " with an HMAC; it never crosses the wire",
		fmt.Sprintf("storage pool %s (%s), networks: %s", c.Storage.Pool, c.Storage.Driver, strings.Join(nets, ", ")),
	}}
}

func deployPlan(r *Recipe) Stage {
	if len(r.Deployments) == 0 {
		return Stage{Name: "deploy: the sites", Steps: []string{"no deployments"}}
	}
	var steps []string
	for _, d := range r.Deployments {
		var sites []string
		for _, s := range d.Sites {
			sites = append(sites, fmt.Sprintf("%s [%s]", s.Domain, strings.Join(s.Services, ", ")))
		}
		steps = append(steps, fmt.Sprintf("project %s (%s stack): sites %s", d.Project(), d.Stack, strings.Join(sites, "; ")))
		for _, role := range d.Instances.Roles() {
			in := role.Instance
			if !in.IsEnabled() {
				steps = append(steps, fmt.Sprintf("  %s: disabled", role.Name))
				continue
			}
			s := fmt.Sprintf("  %s: %s, %d CPU, %s memory, root %s, docker %s, data %s, backup %s",
				role.Name, in.Type, in.CPUs, in.Memory, in.Disks.Root, in.Disks.Docker, in.Disks.Data, in.Disks.Backup)
			if in.MAC != "" {
				s += ", MAC " + string(in.MAC)
			}
			steps = append(steps, s)
		}
	}
	return Stage{Name: "deploy: the sites on the cluster", Steps: steps}
}
