// Package cloudinit renders the cloud-init user-data of a deployment's LXD
// instances (LXD's cloud-init.user-data key). Instances come up offline from
// the pre-loaded base image, so the document only sets what differs per
// instance and tells cloud-init to leave packages alone.
package cloudinit

import (
	"encoding/json"
	"fmt"

	"gopkg.in/yaml.v3"
)

// Instance is what the user-data of one instance says.
type Instance struct {
	Hostname   string   // the instance name, e.g. www
	Deployment string   // the deployment it belongs to (LXD project)
	Role       string   // www, btcpay or clams
	SSHKeys    []string // the owner's authorized_keys lines
}

// InstanceFile is where the instance finds which deployment and role it is.
const InstanceFile = "/etc/ssbuild/instance.json"

type userData struct {
	Hostname         string      `yaml:"hostname"`
	PreserveHostname bool        `yaml:"preserve_hostname"`
	Timezone         string      `yaml:"timezone"`
	PackageUpdate    bool        `yaml:"package_update"`
	PackageUpgrade   bool        `yaml:"package_upgrade"`
	SSHPwauth        bool        `yaml:"ssh_pwauth"`
	SSHKeys          []string    `yaml:"ssh_authorized_keys,omitempty"`
	WriteFiles       []writeFile `yaml:"write_files"`
}

type writeFile struct {
	Path        string `yaml:"path"`
	Permissions string `yaml:"permissions"`
	Content     string `yaml:"content"`
}

// UserData renders the #cloud-config document of one instance.
func UserData(in Instance) ([]byte, error) {
	if in.Hostname == "" || in.Deployment == "" || in.Role == "" {
		return nil, fmt.Errorf("cloud-init user-data: hostname, deployment and role are required (got %+v)", in)
	}
	id, err := json.MarshalIndent(map[string]string{"deployment": in.Deployment, "role": in.Role}, "", "  ")
	if err != nil {
		return nil, err
	}
	doc := userData{
		Hostname: in.Hostname, Timezone: "UTC",
		// Offline by design: everything the instance needs is in the image.
		PackageUpdate: false, PackageUpgrade: false,
		SSHPwauth: false, SSHKeys: in.SSHKeys,
		WriteFiles: []writeFile{{Path: InstanceFile, Permissions: "0644", Content: string(id) + "\n"}},
	}
	body, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("cloud-init user-data of %s: %w", in.Hostname, err)
	}
	return append([]byte("#cloud-config\n"), body...), nil
}
