package stack

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

var update = flag.Bool("update", false, "re-record the golden files in testdata/")

// goldenSecrets gives every secret a readable, fixed value, so golden files
// are stable and show where each secret goes.
func goldenSecrets(t *testing.T, d recipes.Deployment) secrets.Set {
	t.Helper()
	names, err := SecretNames(d)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]string{}
	for _, n := range names {
		values[n] = "SECRET-" + n
	}
	return secrets.New(d.Name, values)
}

func openRecipe(t testing.TB, name string) *recipes.Recipe {
	t.Helper()
	r, err := recipes.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestGolden: the rendered demo and sovereign stacks of the shipped recipes,
// every instance role, match testdata/*.golden.yaml (go test -update
// re-records them).
func TestGolden(t *testing.T) {
	for _, recipe := range []string{"demo", "default"} {
		r := openRecipe(t, recipe)
		for _, d := range r.Deployments {
			sec := goldenSecrets(t, d)
			for _, role := range Roles(d) {
				t.Run(recipe+"/"+role, func(t *testing.T) {
					st, err := Render(r, d, role, sec)
					if err != nil {
						t.Fatal(err)
					}
					got, err := yaml.Marshal(st)
					if err != nil {
						t.Fatal(err)
					}
					golden := filepath.Join("testdata", d.Stack+"-"+role+".golden.yaml")
					if *update {
						if err := os.MkdirAll("testdata", 0o755); err != nil {
							t.Fatal(err)
						}
						if err := os.WriteFile(golden, got, 0o644); err != nil {
							t.Fatal(err)
						}
					}
					want, err := os.ReadFile(golden)
					if err != nil {
						t.Fatalf("%v (run go test -update to record it)", err)
					}
					if string(got) != string(want) {
						t.Errorf("rendered %s stack for %s differs from %s (go test -update re-records it; review the diff):\n%s",
							d.Stack, role, golden, firstDiff(string(want), string(got)))
					}
				})
			}
		}
	}
}

func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:", i+1) + "\n  want: " + a + "\n  got:  " + b
		}
	}
	return ""
}

// TestStackFileErrors: a bad stack file is an error naming file:line of the
// template, also after a loop has expanded earlier lines.
func TestStackFileErrors(t *testing.T) {
	r := openRecipe(t, "demo")
	d := r.Deployments[0]
	sec := goldenSecrets(t, d)
	// bk is a service mounting volume v (w is defined, not mounted); its
	// x-backup starts at line 9.
	bk := "networks:\n  n: {}\nvolumes: {v: {}, w: {}}\nservices:\n  a:\n    image: ssbuild-demo/web\n    volumes: [\"v:/data\"]\n    networks: {n: {}}\n"
	cases := []struct {
		name, src, want string
	}{
		{"unknown key", "networks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web\n    imagee: x\n    networks: {n: {}}\n",
			"bad.yaml:6: field imagee not found"},
		{"after a loop", "volumes:\n{{- range .Sites}}\n  v-{{.ID}}: {}\n{{- end}}\nnetworks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web\n    volumes: [nope:/x]\n    networks: {n: {}}\n",
			"bad.yaml:10: service a: volume \"nope:/x\": volume nope is not defined under volumes"},
		{"image not in the recipe", "networks:\n  n: {}\nservices:\n  a:\n    image: ghost\n    networks: {n: {}}\n",
			"bad.yaml:5: service a: image ghost is not in the recipe's image.dockerImages: add it there"},
		{"tag in the stack", "networks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web:2\n    networks: {n: {}}\n",
			"bad.yaml:5: service a: image \"ssbuild-demo/web:2\": name the repository only"},
		{"template error", "services:\n  a:\n    image: {{.NoSuchField}}\n",
			"bad.yaml:3:"},
		{"yaml syntax", "services:\n  a:\n    image: [x\n",
			"bad.yaml:"},
		{"undefined network", "networks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web\n    networks: {m: {}}\n",
			"bad.yaml:6: service a: network m is not defined"},
		{"bad port", "networks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web\n    networks: {n: {}}\n    ports: [\"http\"]\n",
			"bad.yaml:7: service a: port \"http\""},
		{"bad healthcheck", "networks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web\n    networks: {n: {}}\n    healthcheck: {test: [wget, x]}\n",
			"bad.yaml:7: service a: healthcheck: test: want [CMD, program, args...]"},
		{"bad extra host", "networks:\n  n: {}\nservices:\n  a:\n    image: ssbuild-demo/web\n    networks: {n: {}}\n    extra_hosts: [\"btcpay:gateway\"]\n",
			"bad.yaml:7: service a: extra host \"btcpay:gateway\": the address is not an IP address or host-gateway"},
		{"backup: unknown key", bk + "    x-backup: {dumps: {command: [x], file: a.sql}}\n",
			"bad.yaml:9: field dumps not found"},
		{"backup: dump without command", bk + "    x-backup:\n      dump: {file: a.sql}\n",
			"bad.yaml:9: service a: x-backup: dump: no command"},
		{"backup: dump without restore", bk + "    x-backup:\n      dump: {command: [x], file: a.sql}\n",
			"bad.yaml:9: service a: x-backup: dump: no restore command"},
		{"backup: dump file with a folder", bk + "    x-backup:\n      dump: {command: [x], restore: [y], file: ../a.sql}\n",
			"bad.yaml:9: service a: x-backup: dump: file \"../a.sql\": want a plain file name"},
		{"backup: undefined volume", bk + "    x-backup: {volumes: [nope]}\n",
			"bad.yaml:9: service a: x-backup: volumes \"nope\": volume nope is not defined under volumes"},
		{"backup: volume not mounted", bk + "    x-backup: {volumes: [w]}\n",
			"bad.yaml:9: service a: x-backup: volumes \"w\": the service does not mount volume w"},
		{"backup: relative path", bk + "    x-backup: {volumes: [\"v:data/x\"]}\n",
			"bad.yaml:9: service a: x-backup: volumes \"v:data/x\": the path in the volume must be absolute"},
		{"backup: kept and never restored", bk + "    x-backup:\n      volumes: [v]\n      neverRestore: [\"v:/db.sqlite3\"]\n",
			"bad.yaml:9: service a: x-backup: neverRestore \"v:/db.sqlite3\" overlaps volumes entry v:/"},
		{"backup: empty", bk + "    x-backup: {}\n",
			"bad.yaml:9: service a: x-backup: empty"},
		{"lightning: restart policy", bk + "    restart: unless-stopped\n    x-backup: {volumes: [\"v:/seed\"], neverRestore: [\"v:/db\"]}\n    x-lightning: {volume: v, channelDB: /db, seed: /seed, static: [/seed]}\n",
			"bad.yaml:11: service a: x-lightning: restart unless-stopped: a Lightning node takes no restart policy"},
		{"lightning: channel DB kept", bk + "    x-backup: {volumes: [\"v:/seed\", \"v:/db\"]}\n    x-lightning: {volume: v, channelDB: /db, seed: /seed, static: [/seed]}\n",
			"bad.yaml:10: service a: x-lightning: channelDB /db: declare it in x-backup neverRestore as v:/db"},
		{"lightning: seed not a static file", bk + "    x-backup: {volumes: [\"v:/seed\"], neverRestore: [\"v:/db\"]}\n    x-lightning: {volume: v, channelDB: /db, seed: /other, static: [/seed]}\n",
			"x-lightning: seed \"/other\": name the node's seed (hsm_secret), one of its static files"},
		{"lightning: volume not mounted", bk + "    x-backup: {volumes: [\"v:/seed\"], neverRestore: [\"v:/db\"]}\n    x-lightning: {volume: w, channelDB: /db, seed: /seed, static: [/seed]}\n",
			"the service does not mount volume \"w\""},
		{"missing secret", "services:\n  a:\n    image: ssbuild-demo/web\n    environment: {X: \"{{secret \"never-generated\"}}\"}\n",
			"bad.yaml: secrets never-generated of deployment demo were not generated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := RenderSource("bad.yaml", []byte(c.src), r, d, "www", sec, DefaultOptions)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want it to contain %q", err, c.want)
			}
		})
	}
}

// TestMissingImageInRecipe: the sovereign stack against a recipe without
// one of its images names the image and where to add it.
func TestMissingImageInRecipe(t *testing.T) {
	r := openRecipe(t, "default")
	d := r.Deployments[0]
	r.Image.DockerImages = slices.DeleteFunc(r.Image.DockerImages, func(i recipes.DockerImage) bool {
		return strings.HasPrefix(i.Ref, "scsibug/nostr-rs-relay:")
	})
	_, err := Render(r, d, "www", goldenSecrets(t, d))
	if err == nil || !strings.Contains(err.Error(), "recipes/stacks/sovereign/www.yaml:") ||
		!strings.Contains(err.Error(), "image scsibug/nostr-rs-relay is not in the recipe's image.dockerImages: add it there") {
		t.Fatalf("error %v", err)
	}
}

// TestPinnedDigestCarried: a digest pinned in the recipe reaches the stack.
func TestPinnedDigestCarried(t *testing.T) {
	r := openRecipe(t, "default")
	d := r.Deployments[0]
	pin := "sha256:" + strings.Repeat("ab", 32)
	for i := range r.Image.DockerImages {
		if strings.HasPrefix(r.Image.DockerImages[i].Ref, "caddy:") {
			r.Image.DockerImages[i].Digest = pin
		}
	}
	st, err := Render(r, d, "www", goldenSecrets(t, d))
	if err != nil {
		t.Fatal(err)
	}
	if c := st.Service("caddy"); c == nil || c.ImageDigest != pin || c.Image != "caddy:2.8.4-alpine" {
		t.Fatalf("caddy service %+v", c)
	}
}

// TestSovereignStackShape: what a site owner expects of the sovereign
// stack: TLS names for every site domain and BTCPay alt name, a Ghost and
// MySQL per site language, the nostr relay whitelisting only the owner,
// offers enabled on Core Lightning, no password that is not generated.
func TestSovereignStackShape(t *testing.T) {
	r := openRecipe(t, "default")
	d := r.Deployments[0]
	sec := goldenSecrets(t, d)
	www, err := Render(r, d, "www", sec)
	if err != nil {
		t.Fatal(err)
	}
	caddyfile := www.Service("caddy").Files[0].Content
	for _, name := range []string{"example.com {", "www.example.com {", "relay.example.com {", "git.example.com {",
		"nextcloud.example.com {", "btcpay.example.com, pay.example.com, tip.example.com, store.example.com {",
		"example.net {", "www.example.net {", "btcpay.example.net {"} {
		if !strings.Contains(caddyfile, "\n"+name) {
			t.Errorf("Caddyfile has no site block %q", name)
		}
	}
	for _, svc := range []string{"ghost-example-com-en", "ghost-example-com-en-mysql", "ghost-example-net-en", "ghost-example-net-es",
		"ghost-example-net-es-mysql", "nextcloud-example-com", "gitea-example-com", "nostr-example-com"} {
		if www.Service(svc) == nil {
			t.Errorf("www stack has no %s", svc)
		}
	}
	if url := www.Service("ghost-example-net-es").Environment["url"]; url != "https://www.example.net/es" {
		t.Errorf("Spanish Ghost url %q", url)
	}
	relay := www.Service("nostr-example-com").Files[0].Content
	owner, _ := recipes.NostrPubkeyHex(d.Sites[0].NostrOwner)
	if !strings.Contains(relay, `pubkey_whitelist = ["`+owner+`"]`) {
		t.Errorf("relay config does not whitelist only %s:\n%s", owner, relay)
	}
	btc, err := Render(r, d, "btcpay", sec)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(btc.Service("lightningd").Command, "--experimental-offers") {
		t.Error("Core Lightning without --experimental-offers (BOLT12)")
	}
	// Every password-like setting holds a generated secret.
	for _, st := range []*Stack{www, btc} {
		for _, svc := range st.Services {
			for k, v := range svc.Environment {
				if strings.Contains(strings.ToUpper(k), "PASSWORD") || strings.Contains(strings.ToUpper(k), "PASSWD") ||
					strings.Contains(k, "SECRET") || strings.HasSuffix(k, "__password") {
					if !strings.HasPrefix(v, "SECRET-") {
						t.Errorf("%s %s=%q is not a generated secret", svc.Name, k, v)
					}
				}
			}
		}
	}
}

// TestCaddyValidates: Caddy itself accepts the rendered Caddyfile.
func TestCaddyValidates(t *testing.T) {
	testenv.RequireTools(t, "caddy")
	for _, recipe := range []string{"default"} {
		r := openRecipe(t, recipe)
		d := r.Deployments[0]
		for _, chain := range []string{"mainnet", "regtest"} {
			d.Chain = chain
			st, err := Render(r, d, "www", goldenSecrets(t, d))
			if err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(t.TempDir(), "Caddyfile")
			if err := os.WriteFile(f, []byte(st.Service("caddy").Files[0].Content), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("caddy", "validate", "--adapter", "caddyfile", "--config", f)
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "XDG_DATA_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("caddy validate (%s): %v\n%s", chain, err, out)
			}
		}
	}
}

// TestRenderDeterministic: two renders are identical (golden files and
// spec hashes rely on it).
func TestRenderDeterministic(t *testing.T) {
	r := openRecipe(t, "default")
	d := r.Deployments[0]
	sec := goldenSecrets(t, d)
	for _, role := range Roles(d) {
		a, _ := Render(r, d, role, sec)
		b, _ := Render(r, d, role, sec)
		for i := range a.Services {
			if specHash(&a.Services[i], "x") != specHash(&b.Services[i], "x") {
				t.Errorf("%s/%s: two renders hash differently", role, a.Services[i].Name)
			}
		}
	}
}

// TestNoStackForRole: the demo stack has no clams file; Roles leaves the
// role out and Render says which file is missing.
func TestNoStackForRole(t *testing.T) {
	r := openRecipe(t, "demo")
	d := r.Deployments[0]
	if got := Roles(d); !slices.Equal(got, []string{"www", "btcpay"}) {
		t.Errorf("Roles(demo) = %v", got)
	}
	_, err := Render(r, d, "clams", goldenSecrets(t, d))
	if err == nil || !strings.Contains(err.Error(), "recipes/stacks/demo/clams.yaml") {
		t.Fatalf("Render(demo, clams): %v", err)
	}
}

// TestURLs: the addresses show prints for the demo deployment.
func TestURLs(t *testing.T) {
	d := openRecipe(t, "demo").Deployments[0]
	var got []string
	for _, u := range URLs(d) {
		got = append(got, u.Service+" "+u.URL)
	}
	want := []string{"ghost http://www.demo.example/", "btcpay http://btcpay.demo.example/",
		"ghost http://www.blog.example/", "nostr-relay ws://relay.blog.example/", "btcpay http://btcpay.blog.example/"}
	if !slices.Equal(got, want) {
		t.Errorf("URLs(demo) =\n%q\nwant\n%q", got, want)
	}
}

// TestChainstateDir: with the instance's chainstate directory given,
// bitcoind keeps its data there (a bind mount), not in a Docker volume.
func TestChainstateDir(t *testing.T) {
	r := openRecipe(t, "default")
	d := r.Deployments[0]
	opts := DefaultOptions
	opts.ChainstateDir = "/var/lib/ssbuild/chainstate"
	st, err := RenderWith(r, d, "btcpay", goldenSecrets(t, d), opts)
	if err != nil {
		t.Fatal(err)
	}
	m := st.Service("bitcoind").Mounts
	if len(m) != 1 || m[0].Type != "bind" || m[0].Source != opts.ChainstateDir || m[0].Target != "/data" {
		t.Fatalf("bitcoind mounts %+v", m)
	}
}
