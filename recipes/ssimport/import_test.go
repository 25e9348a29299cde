package ssimport

import (
	"bytes"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/recipes"
)

var update = flag.Bool("update", false, "re-record the golden recipes under testdata/")

// The three sample configurations, one per era of Sovereign Stack.
var (
	set2308 = Input{
		Remote:  "testdata/2308/remotes/home/remote.conf",
		Project: "testdata/2308/projects/staging-testnet/project.conf",
		Sites:   []string{"testdata/2308/sites/example.org/site.conf", "testdata/2308/sites/blog.example.org/site.conf"},
	}
	setHead = Input{
		Remote:  "testdata/head/remotes/nuc/remote.conf",
		Project: "testdata/head/projects/production-mainnet/project.conf",
		Sites:   []string{"testdata/head/sites/shop.example/site.conf"},
	}
	set2022 = Input{
		Remote:  "testdata/2022/remotes/lab/cluster_definition",
		Project: "testdata/2022/projects/public/project_definition",
		Sites:   []string{"testdata/2022/sites/oldsite.example/site_definition"},
	}
)

const (
	siteSecret  = "secret not imported; ssbuild generates one per deployment (value not shown)"
	otherSecret = "secret not imported; ssbuild has no setting for it (value not shown)"
)

func TestImport2308(t *testing.T) {
	r := importSet(t, "2308", set2308, []string{
		"testdata/2308/remotes/home/remote.conf:2: LXD_REMOTE_PASSWORD: secret not imported; ssbuild generates its own cluster secret (value not shown)",
		"testdata/2308/sites/example.org/site.conf:7: DUPLICITY_BACKUP_PASSPHRASE: " + siteSecret,
		"testdata/2308/sites/example.org/site.conf:13: GHOST_MYSQL_PASSWORD: " + siteSecret,
		"testdata/2308/sites/example.org/site.conf:14: GHOST_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/2308/sites/example.org/site.conf:15: NEXTCLOUD_MYSQL_PASSWORD: " + siteSecret,
		"testdata/2308/sites/example.org/site.conf:16: NEXTCLOUD_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/2308/sites/example.org/site.conf:17: GITEA_MYSQL_PASSWORD: " + siteSecret,
		"testdata/2308/sites/example.org/site.conf:18: GITEA_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/2308/sites/blog.example.org/site.conf:3: DUPLICITY_BACKUP_PASSPHRASE: " + siteSecret,
		"testdata/2308/sites/blog.example.org/site.conf:9: GHOST_MYSQL_PASSWORD: " + siteSecret,
		"testdata/2308/sites/blog.example.org/site.conf:10: GHOST_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/2308/projects/staging-testnet/project.conf:19: CLAMS_SERVER_MAC_ADDRESS: empty, so Sovereign Stack would not create the clams instance; imported as enabled: false",
		"testdata/2308/projects/staging-testnet/project.conf:2: OTHER_SITES_LIST: no site.conf given for shop.example.org; imported with Sovereign Stack's site defaults (ghost, language en)",
		"testdata/2308/remotes/home/remote.conf:5: DEPLOYMENT_STRING: (dev|regtest) not imported: no project.conf given for dev-regtest; import it with its own project.conf",
	})
	if r.Image.RegistryMirror != "http://registry.lan:5000" {
		t.Errorf("image.registryMirror = %q, want REGISTRY_URL", r.Image.RegistryMirror)
	}
	if len(r.Deployments) != 1 {
		t.Fatalf("%d deployments, want the one of project.conf", len(r.Deployments))
	}
	d := r.Deployments[0]
	if d.Project() != "staging-testnet" || d.PrimaryDomain != "example.org" {
		t.Errorf("deployment %s for %s, want staging-testnet (the project.conf directory) for example.org", d.Project(), d.PrimaryDomain)
	}
	wantSites := []recipes.Site{
		{Domain: "example.org", Languages: []string{"en", "es"}, BTCPayAltNames: []string{"tip", "store", "pay"},
			Services: []string{"ghost", "nextcloud", "gitea"}},
		{Domain: "blog.example.org", Languages: []string{"en"}, BTCPayAltNames: []string{}, Services: []string{"ghost", "nostr-relay"},
			NostrOwner: "npub1pt5s6shsc95tped20rwcwqugup0gn4khgqaattndm393g3uc2s9svzv06y"},
		{Domain: "shop.example.org", Languages: []string{"en"}, BTCPayAltNames: []string{}, Services: []string{"ghost"}},
	}
	if !reflect.DeepEqual(d.Sites, wantSites) {
		t.Errorf("sites:\n got %+v\nwant %+v", d.Sites, wantSites)
	}
	checkInstance(t, "www", d.Instances.WWW, true, "00:16:3e:aa:00:01", 6, 8*recipes.GiB, recipes.Disks{Root: 20 * recipes.GiB, Data: 100 * recipes.GiB, Backup: 60 * recipes.GiB, Docker: 80 * recipes.GiB})
	checkInstance(t, "btcpay", d.Instances.BTCPay, true, "00:16:3e:aa:00:02", 4, 6*recipes.GiB, recipes.Disks{Root: 20 * recipes.GiB, Data: 40 * recipes.GiB, Backup: 40 * recipes.GiB, Docker: 150 * recipes.GiB})
	checkInstance(t, "clams", d.Instances.Clams, false, "", 2, 2*recipes.GiB, recipes.Disks{Root: 20 * recipes.GiB, Data: 10 * recipes.GiB, Backup: 10 * recipes.GiB, Docker: 30 * recipes.GiB})
	// The base is the shipped default recipe.
	if len(r.Installer.Hosts) != 3 || r.Cluster.Initiator != "nuc1" || !r.Cluster.Secret.Generate || r.Image.Source.Suite != "jammy" {
		t.Errorf("installer/cluster/image are not the default recipe's: hosts %v, initiator %q, secret %+v, suite %q",
			r.Installer.Hosts, r.Cluster.Initiator, r.Cluster.Secret, r.Image.Source.Suite)
	}
}

func TestImportHead(t *testing.T) {
	r := importSet(t, "head", setHead, []string{
		"testdata/head/remotes/nuc/remote.conf:3: REGISTRY_URL: not mapped: Docker Hub is the default registry; no mirror is set",
		"testdata/head/sites/shop.example/site.conf:4: DUPLICITY_BACKUP_PASSPHRASE: " + siteSecret,
		"testdata/head/sites/shop.example/site.conf:10: DEPLOY_CLBOSS_PLUGIN: not mapped: it had no effect in Sovereign Stack (the code that read it was commented out)",
		"testdata/head/sites/shop.example/site.conf:11: GHOST_MYSQL_PASSWORD: " + siteSecret,
		"testdata/head/sites/shop.example/site.conf:12: GHOST_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/head/sites/shop.example/site.conf:13: GHOST_DEPLOY_SMTP: not mapped: ssbuild does not configure Ghost mail (SMTP)",
		"testdata/head/sites/shop.example/site.conf:14: MAILGUN_FROM_ADDRESS: not mapped: ssbuild does not configure Ghost mail (SMTP)",
		"testdata/head/sites/shop.example/site.conf:15: MAILGUN_SMTP_USERNAME: not mapped: ssbuild does not configure Ghost mail (SMTP)",
		"testdata/head/sites/shop.example/site.conf:16: MAILGUN_SMTP_PASSWORD: " + otherSecret,
		"testdata/head/sites/shop.example/site.conf:17: SITE_HTML_PATH: not mapped: not a Sovereign Stack setting this importer knows",
	})
	if r.Image.RegistryMirror != "" {
		t.Errorf("image.registryMirror = %q; Docker Hub must not become a mirror", r.Image.RegistryMirror)
	}
	d := r.Deployments[0]
	if d.Project() != "production-mainnet" || d.PrimaryDomain != "shop.example" {
		t.Errorf("deployment %s for %s, want production-mainnet for shop.example", d.Project(), d.PrimaryDomain)
	}
	wantSites := []recipes.Site{{Domain: "shop.example", Languages: []string{"en"}, BTCPayAltNames: []string{},
		Services: []string{"ghost", "nostr-relay"}, NostrOwner: "0ae90d42f0c168b0e5aa78dd870388e05e89d6d7403bd5ae6ddc4b144798540b"}}
	if !reflect.DeepEqual(d.Sites, wantSites) {
		t.Errorf("sites:\n got %+v\nwant %+v", d.Sites, wantSites)
	}
	// Mainnet defaults for what project.conf leaves out.
	checkInstance(t, "www", d.Instances.WWW, true, "02:5e:10:00:00:01", 4, 4*recipes.GiB, recipes.Disks{Root: 20 * recipes.GiB, Data: 40 * recipes.GiB, Backup: 40 * recipes.GiB, Docker: 50 * recipes.GiB})
	checkInstance(t, "btcpay", d.Instances.BTCPay, true, "02:5e:10:00:00:02", 4, 4*recipes.GiB, recipes.Disks{Root: 20 * recipes.GiB, Data: 30 * recipes.GiB, Backup: 30 * recipes.GiB, Docker: 500 * recipes.GiB})
	checkInstance(t, "clams (LNPLAY_*)", d.Instances.Clams, true, "02:5e:10:00:00:03", 8, 16*recipes.GiB, recipes.Disks{Root: 20 * recipes.GiB, Data: 25 * recipes.GiB, Backup: 25 * recipes.GiB, Docker: 600 * recipes.GiB})
}

func TestImport2022(t *testing.T) {
	r := importSet(t, "2022", set2022, []string{
		"testdata/2022/remotes/lab/cluster_definition:4: LXD_CLUSTER_PASSWORD: secret not imported; ssbuild generates its own cluster secret (value not shown)",
		"testdata/2022/remotes/lab/cluster_definition:5: SOVEREIGN_STACK_MAC_ADDRESS: not mapped: the 2022 single-VM MAC has no counterpart; pin instance MACs with *_SERVER_MAC_ADDRESS in project.conf and host MACs under installer.hosts",
		"testdata/2022/remotes/lab/cluster_definition:7: REGISTRY_URL: not mapped: Docker Hub is the default registry; no mirror is set",
		"testdata/2022/remotes/lab/cluster_definition:8: REGISTRY_USERNAME: not mapped: ssbuild pre-loads Docker images into the base image; registry logins are not supported",
		"testdata/2022/remotes/lab/cluster_definition:9: REGISTRY_PASSWORD: " + otherSecret,
		"testdata/2022/remotes/lab/cluster_definition:10: DEPLOY_ONION_SITE: not mapped: ssbuild deploys no Tor onion site",
		"testdata/2022/remotes/lab/cluster_definition:11: DEPLOY_MGMT_REGISTRY: not mapped: ssbuild pre-loads Docker images into the base image; no registry instance is needed",
		"testdata/2022/remotes/lab/cluster_definition:12: VLAN_INTERFACE: not mapped: it was unused in Sovereign Stack; networks are set under cluster.networks",
		"testdata/2022/remotes/lab/cluster_definition:6: PROJECT_NAME: used as the deployment name; its LXD project is public-regtest",
		"testdata/2022/projects/public/project_definition:11: NEXTCLOUD_SPACE_GB: not mapped: Nextcloud data lives on the www data volume; size it with WWW_SSDATA_DISK_SIZE_GB",
		"testdata/2022/sites/oldsite.example/site_definition:4: DUPLICITY_BACKUP_PASSPHRASE: " + siteSecret,
		"testdata/2022/sites/oldsite.example/site_definition:10: GHOST_MYSQL_PASSWORD: " + siteSecret,
		"testdata/2022/sites/oldsite.example/site_definition:11: GHOST_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/2022/sites/oldsite.example/site_definition:12: NEXTCLOUD_MYSQL_PASSWORD: " + siteSecret,
		"testdata/2022/sites/oldsite.example/site_definition:13: NEXTCLOUD_MYSQL_ROOT_PASSWORD: " + siteSecret,
		"testdata/2022/sites/oldsite.example/site_definition:6: DEPLOY_CLAMS: the clams instance is enabled (DEPLOY_CLAMS=true) without a pinned MAC; set instances.clams.mac for a DHCP reservation",
	})
	d := r.Deployments[0]
	if d.Project() != "public-regtest" || d.PrimaryDomain != "oldsite.example" {
		t.Errorf("deployment %s for %s, want public-regtest (PROJECT_NAME, default chain) for oldsite.example", d.Project(), d.PrimaryDomain)
	}
	wantSites := []recipes.Site{{Domain: "oldsite.example", Languages: []string{"en"}, BTCPayAltNames: []string{},
		Services: []string{"ghost", "nostr-relay"}, NostrOwner: "0ae90d42f0c168b0e5aa78dd870388e05e89d6d7403bd5ae6ddc4b144798540b"}}
	if !reflect.DeepEqual(d.Sites, wantSites) {
		t.Errorf("sites (DEPLOY_NOSTR_RELAY is the old DEPLOY_NOSTR):\n got %+v\nwant %+v", d.Sites, wantSites)
	}
	regtest := recipes.Disks{Root: 20 * recipes.GiB, Data: 20 * recipes.GiB, Backup: 50 * recipes.GiB, Docker: 30 * recipes.GiB}
	checkInstance(t, "www", d.Instances.WWW, true, "00:16:3e:22:00:01", 6, 4*recipes.GiB, regtest)
	regtest.Backup, regtest.Docker = 20*recipes.GiB, 30*recipes.GiB
	checkInstance(t, "btcpay (BTCPAYSERVER_MAC_ADDRESS)", d.Instances.BTCPay, true, "00:16:3e:22:00:02", 4, 4*recipes.GiB, regtest)
	regtest.Docker = 100 * recipes.GiB
	checkInstance(t, "clams (DEPLOY_CLAMS)", d.Instances.Clams, true, "", 4, 4*recipes.GiB, regtest)
}

// importSet imports a sample set and checks the warnings, the rendered
// recipe against its golden file, that it loads, and that no secret shows.
func importSet(t *testing.T, name string, in Input, wantWarnings []string) *recipes.Recipe {
	t.Helper()
	r, warns, err := Import(in)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	checkWarnings(t, warns, wantWarnings)
	out, err := Render(r, in)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	golden := filepath.Join("testdata", name, "recipe.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to record it)", err)
	}
	if !bytes.Equal(out, want) {
		t.Errorf("rendered recipe differs from %s (go test -update re-records it):\n%s", golden, out)
	}
	back, err := recipes.Parse(golden, out, "")
	if err != nil {
		t.Fatalf("the rendered recipe does not load: %v", err)
	}
	m1, _ := recipes.Marshal(r)
	m2, _ := recipes.Marshal(back)
	if !bytes.Equal(m1, m2) {
		t.Errorf("the rendered recipe loads to another recipe than the imported one:\n%s", m2)
	}
	noSecrets(t, string(out), "the rendered recipe")
	for _, w := range warns {
		noSecrets(t, w.String(), "a warning")
	}
	return r
}

func checkWarnings(t *testing.T, got []Warning, want []string) {
	t.Helper()
	var lines []string
	for _, w := range got {
		lines = append(lines, w.String())
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("warnings:\n got %s\nwant %s", strings.Join(lines, "\n     "), strings.Join(want, "\n     "))
	}
}

func checkInstance(t *testing.T, role string, in recipes.Instance, enabled bool, mac recipes.MAC, cpus int, mem recipes.Size, disks recipes.Disks) {
	t.Helper()
	if in.IsEnabled() != enabled || in.MAC != mac || in.CPUs != cpus || in.Memory != mem || in.Disks != disks || in.Type != "container" {
		t.Errorf("%s instance: enabled %v mac %q cpus %d memory %s disks %+v type %s\nwant enabled %v mac %q cpus %d memory %s disks %+v type container",
			role, in.IsEnabled(), in.MAC, in.CPUs, in.Memory, in.Disks, in.Type, enabled, mac, cpus, mem, disks)
	}
}

// secretValues are the values of every secret in the sample files.
func secretValues(t *testing.T) []string {
	t.Helper()
	var vals []string
	err := filepath.WalkDir("testdata", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".yaml") || strings.Contains(path, "fuzz") {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, _, _ := parseConf(path, data)
		for _, a := range f.Vars {
			if secretMessage(a.Key) != "" && a.Value != "" {
				vals = append(vals, a.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

var secrets []string

func noSecrets(t *testing.T, text, where string) {
	t.Helper()
	if secrets == nil {
		secrets = secretValues(t)
		if len(secrets) < 20 {
			t.Fatalf("found only %d secrets in testdata; the secret check would prove little", len(secrets))
		}
	}
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s shows the secret %q:\n%s", where, s, text)
		}
	}
	if strings.Contains(text, "S3CRET") {
		t.Errorf("%s shows a secret (S3CRET):\n%s", where, text)
	}
}

// TestEveryKeyCovered makes sure the sample files use every key the
// importer is documented to handle.
func TestEveryKeyCovered(t *testing.T) {
	want := []string{
		"LXD_REMOTE_PASSWORD", "DEPLOYMENT_STRING", "REGISTRY_URL", "LXD_CLUSTER_PASSWORD", "REGISTRY_USERNAME",
		"REGISTRY_PASSWORD", "PROJECT_NAME", "SOVEREIGN_STACK_MAC_ADDRESS",
		"PRIMARY_DOMAIN", "OTHER_SITES_LIST", "BTCPAYSERVER_MAC_ADDRESS", "ROOT_DISK_SIZE_GB", "BITCOIN_CHAIN",
		"DOMAIN_NAME", "BTCPAY_ALT_NAMES", "SITE_LANGUAGE_CODES", "DEPLOY_GHOST", "DEPLOY_NEXTCLOUD", "DEPLOY_NOSTR",
		"DEPLOY_NOSTR_RELAY", "DEPLOY_GITEA", "DEPLOY_CLAMS", "NOSTR_ACCOUNT_PUBKEY", "DUPLICITY_BACKUP_PASSPHRASE",
		"GHOST_MYSQL_PASSWORD", "GHOST_MYSQL_ROOT_PASSWORD", "NEXTCLOUD_MYSQL_PASSWORD", "NEXTCLOUD_MYSQL_ROOT_PASSWORD",
		"GITEA_MYSQL_PASSWORD", "GITEA_MYSQL_ROOT_PASSWORD", "MAILGUN_SMTP_PASSWORD", "DEPLOY_CLBOSS_PLUGIN",
		"GHOST_DEPLOY_SMTP", "MAILGUN_FROM_ADDRESS", "MAILGUN_SMTP_USERNAME",
	}
	for _, vm := range []string{"WWW", "BTCPAY", "CLAMS", "LNPLAY"} {
		want = append(want, vm+"_SERVER_MAC_ADDRESS", vm+"_SERVER_CPU_COUNT", vm+"_SERVER_MEMORY_MB",
			vm+"_SSDATA_DISK_SIZE_GB", vm+"_BACKUP_DISK_SIZE_GB", vm+"_DOCKER_DISK_SIZE_GB")
	}
	used := map[string]bool{}
	for _, in := range []Input{set2308, setHead, set2022} {
		for _, p := range append([]string{in.Remote, in.Project}, in.Sites...) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			f, _, _ := parseConf(p, data)
			for _, a := range f.Vars {
				used[a.Key] = true
			}
		}
	}
	for _, k := range want {
		if !used[k] {
			t.Errorf("no sample configuration sets %s", k)
		}
	}
}
