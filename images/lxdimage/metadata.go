package lxdimage

import (
	"bytes"
	"fmt"
	"runtime"

	"gopkg.in/yaml.v3"
)

// Properties describe the image to LXD users (`lxc image info`, aliases).
type Properties struct {
	OS          string // e.g. ubuntu, debian
	Release     string // e.g. jammy, bookworm
	Description string
	Name        string // default: OS-Release-architecture
}

// metadata is LXD's metadata.yaml (doc/reference/image_format.md in LXD).
// Field order is fixed by the struct, so the YAML is reproducible.
type metadata struct {
	Architecture string              `yaml:"architecture"`
	CreationDate int64               `yaml:"creation_date"`
	Properties   map[string]string   `yaml:"properties"`
	Templates    map[string]template `yaml:"templates"`
}

type template struct {
	When       []string          `yaml:"when"`
	CreateOnly bool              `yaml:"create_only"`
	Template   string            `yaml:"template"`
	Properties map[string]string `yaml:"properties"`
}

// The templates LXD renders (pongo2) into every new instance: its name as
// hostname, and an /etc/hosts that resolves that name, as LXD's own images
// do. On create and copy only, so a user's later edits survive restarts.
var templateFiles = map[string]struct{ target, body string }{
	"hostname.tpl": {"/etc/hostname", "{{ instance.name }}\n"},
	"hosts.tpl": {"/etc/hosts", `127.0.0.1	localhost
127.0.1.1	{{ instance.name }}

# The following lines are desirable for IPv6 capable hosts
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`},
}

// lxdArchitecture maps Go's architecture names to LXD's.
func lxdArchitecture(goarch string) (string, error) {
	switch goarch {
	case "amd64":
		return "x86_64", nil
	case "arm64":
		return "aarch64", nil
	case "386":
		return "i686", nil
	case "ppc64le":
		return "ppc64le", nil
	case "s390x":
		return "s390x", nil
	case "riscv64":
		return "riscv64", nil
	}
	return "", fmt.Errorf("no LXD architecture name for GOARCH %s", goarch)
}

// metadataYAML renders metadata.yaml. With a VM image it declares
// requirements.secureboot=false: the ESP's systemd-boot is not signed, and
// LXD then refuses to start the VM under secure boot with a message naming
// the image, rather than leaving it stuck in the firmware.
func metadataYAML(arch string, epoch int64, p Properties, vm bool) ([]byte, error) {
	m := metadata{
		Architecture: arch,
		CreationDate: epoch,
		Properties: map[string]string{
			"architecture": arch,
			"os":           p.OS,
			"release":      p.Release,
			"description":  p.Description,
			"name":         p.Name,
		},
		Templates: map[string]template{},
	}
	if vm {
		m.Properties["requirements.secureboot"] = "false"
	}
	for file, t := range templateFiles {
		m.Templates[t.target] = template{When: []string{"create", "copy"}, Template: file, Properties: map[string]string{}}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil { // yaml.v3 sorts map keys
		return nil, fmt.Errorf("metadata.yaml: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("metadata.yaml: %w", err)
	}
	return buf.Bytes(), nil
}

// metadataEntries are the archive entries every LXD image tarball starts
// with: metadata.yaml and templates/.
func metadataEntries(metaYAML []byte) []tarEntry {
	entries := []tarEntry{
		{name: "metadata.yaml", mode: 0o644, body: metaYAML},
		{name: "templates/", mode: 0o755},
	}
	for file, t := range templateFiles {
		entries = append(entries, tarEntry{name: "templates/" + file, mode: 0o644, body: []byte(t.body)})
	}
	return entries
}

func defaultArchitecture() (string, error) { return lxdArchitecture(runtime.GOARCH) }
