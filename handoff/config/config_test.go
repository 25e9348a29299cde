package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/recipes"
)

const good = `host:
  name: host2
  address: 10.0.0.12
cluster:
  name: demo
  initiator: host1
  initiatorAddress: 10.0.0.11
  members:
    - {name: host1, address: 10.0.0.11}
    - {name: host2, address: 10.0.0.12}
  storage: {pool: local, driver: dir, source: /var/lib/ssbuild/pool}
  networks:
    - {name: lxdbr0, type: bridge, ipv4: 10.99.0.1/24}
secretFile: /etc/ssbuild/cluster.secret
stateDir: /var/lib/ssbuild
`

func TestParseGood(t *testing.T) {
	a, err := config.Parse("appliance.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if a.IsInitiator() || a.Host.Name != "host2" || a.Cluster.RegistrationPort != config.DefaultRegistrationPort {
		t.Errorf("unexpected: %+v", a)
	}
	if got := a.Cluster.RegistrationAddress(); got != "10.0.0.11:9443" {
		t.Errorf("registration address %q", got)
	}
	if got := a.Cluster.RegistryAddress(a.Host.Address); got != "10.0.0.12:9444" {
		t.Errorf("registry address %q, want the default port 9444", got)
	}
	// What Marshal writes loads back the same.
	data, err := config.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	b, err := config.Parse("again.yaml", data)
	if err != nil {
		t.Fatalf("marshalled config does not load: %v\n%s", err, data)
	}
	if b.Cluster.Storage != a.Cluster.Storage || len(b.Cluster.Members) != 2 {
		t.Errorf("round trip changed it: %+v", b)
	}
}

func TestParseProblemsHaveLines(t *testing.T) {
	for _, tc := range []struct{ name, from, to, want string }{
		{"unknown key", "stateDir:", "statedir:", "appliance.yaml:15:"},
		{"bad driver", "driver: dir", "driver: ext4", `appliance.yaml:11:34: cluster.storage.driver: "ext4"`},
		{"registry port on the registration port", "  members:", "  registryPort: 9443\n  members:", `appliance.yaml:8:17: cluster.registryPort: 9443 is the registrationPort too`},
		{"host not member", "name: host2\n  address", "name: host9\n  address", `appliance.yaml:2:9: host.name: "host9" is not among`},
		{"bad address", "address: 10.0.0.12\ncluster", "address: 10.0.0.12/24\ncluster", `appliance.yaml:3:12: host.address`},
		{"wrong initiator address", "initiatorAddress: 10.0.0.11", "initiatorAddress: 10.0.0.13", `appliance.yaml:7:21: cluster.initiatorAddress`},
		{"relative secret", "secretFile: /etc", "secretFile: etc", `appliance.yaml:14:13: secretFile`},
		{"syntax", "members:", "members: [", "appliance.yaml:"},
		{"unknown deploy key", "stateDir: /var/lib/ssbuild\n", "stateDir: /var/lib/ssbuild\ndeploy: {recipe: /r.yaml, images: /i}\n", `appliance.yaml:16:`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(good, tc.from, tc.to, 1)
			if src == good {
				t.Fatalf("replacement %q not found", tc.from)
			}
			_, err := config.Parse("appliance.yaml", []byte(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// The initiator's deploy section: absolute paths, the image optional.
func TestParseDeploy(t *testing.T) {
	initiator := strings.NewReplacer("name: host2\n  address: 10.0.0.12", "name: host1\n  address: 10.0.0.11").Replace(good)
	a, err := config.Parse("appliance.yaml", []byte(initiator))
	if err != nil || a.Deploy != nil {
		t.Fatalf("no deploy section: %+v, %v", a, err)
	}
	with := initiator + "deploy:\n  recipe: /etc/ssbuild/recipe.yaml\n  image: /var/lib/ssbuild/base-image\n"
	a, err = config.Parse("appliance.yaml", []byte(with))
	if err != nil {
		t.Fatal(err)
	}
	if *a.Deploy != (config.Deploy{Recipe: config.DefaultRecipePath, Image: config.DefaultImageDir}) {
		t.Errorf("deploy section %+v", *a.Deploy)
	}
	data, _ := config.Marshal(a)
	if b, err := config.Parse("again.yaml", data); err != nil || *b.Deploy != *a.Deploy {
		t.Errorf("round trip of the deploy section: %v\n%s", err, data)
	}
	if _, err := config.Parse("appliance.yaml", []byte(initiator+"deploy: {recipe: /etc/ssbuild/recipe.yaml}\n")); err != nil {
		t.Errorf("a deploy without image: %v", err)
	}
	_, err = config.Parse("appliance.yaml", []byte(initiator+"deploy:\n  recipe: recipe.yaml\n  image: base-image\n"))
	for _, want := range []string{`appliance.yaml:17:11: deploy.recipe: "recipe.yaml": want an absolute path`, `appliance.yaml:18:10: deploy.image`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("relative paths: %v, want %q", err, want)
		}
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	secret := []byte("correct horse battery staple")
	path := filepath.Join(dir, "cluster.secret")
	if err := config.WriteSecret(path, secret); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode: %v %v", info.Mode(), err)
	}
	if err := config.WriteSecret(path, secret); err == nil {
		t.Fatal("WriteSecret overwrote an existing file")
	}
	got, err := config.ReadSecret(path)
	if err != nil || string(got) != string(secret) {
		t.Fatalf("ReadSecret: %q, %v", got, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := config.ReadSecret(path)
		if err == nil {
			t.Fatalf("mode %04o accepted", mode)
		}
		if strings.Contains(err.Error(), string(secret)) {
			t.Fatalf("error reveals the secret: %v", err)
		}
	}
	short := filepath.Join(dir, "short")
	if err := config.WriteSecret(short, []byte("abc\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := config.ReadSecret(short); err == nil || strings.Contains(err.Error(), "abc") {
		t.Fatalf("short secret: %v", err)
	}
}

func TestFromRecipe(t *testing.T) {
	src, err := recipes.BuiltinSource("demo")
	if err != nil {
		t.Fatal(err)
	}
	r, err := recipes.Parse("builtin:demo", src, "")
	if err != nil {
		t.Fatal(err)
	}
	files := config.HostFiles{StorageSource: "/dev/disk/by-partlabel/zfs", SecretFile: "/etc/ssbuild/cluster.secret", StateDir: "/var/lib/ssbuild"}
	for i := range r.Installer.Hosts { // a recipe built in code, not validated
		r.Installer.Hosts[i].Address = ""
	}
	if _, err := config.FromRecipe(r, "demo2", files); err == nil || !strings.Contains(err.Error(), "without a static address: demo1, demo2, demo3") {
		t.Fatalf("DHCP hosts: %v", err)
	}
	for i := range r.Installer.Hosts {
		r.Installer.Hosts[i].Address = fmt.Sprintf("192.168.1.%d/24", 11+i)
	}
	a, err := config.FromRecipe(r, "demo2", files)
	if err != nil {
		t.Fatal(err)
	}
	if a.Host.Address != "192.168.1.12" || a.Cluster.InitiatorAddress != "192.168.1.11" || a.IsInitiator() ||
		a.Cluster.RegistrationPort != r.Cluster.RegistrationPort || a.Cluster.Storage.Source != files.StorageSource || len(a.Cluster.Members) != 3 {
		t.Errorf("unexpected: %+v", a)
	}
	if _, err := config.FromRecipe(r, "demo9", files); err == nil {
		t.Error("a host outside the recipe got a config")
	}
}
