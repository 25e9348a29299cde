package recipes_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// validate writes text as r.yaml (and the secret, when given, as
// cluster.secret next to it) and returns what `recipe validate` reports,
// with the recipe's folder written as DIR.
func validate(t *testing.T, text, secret string, mode os.FileMode) []string {
	t.Helper()
	dir := t.TempDir()
	if secret != "" {
		p := filepath.Join(dir, "cluster.secret")
		if err := os.WriteFile(p, []byte(secret), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "r.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := recipes.Validate(path, config.CheckRecipe, stack.CheckImages)
	var out []string
	for _, p := range recipes.Problems(err) {
		out = append(out, strings.ReplaceAll(p.String(), dir, "DIR"))
	}
	if err != nil && out == nil {
		t.Fatal(err)
	}
	return out
}

const checkBase = `apiVersion: ssbuild/v1
name: t
installer:
  hosts:
    - {name: h1, address: 10.0.0.1/24}
`

func TestValidateRunsTheBuildAndDeployRules(t *testing.T) {
	good := "0123456789abcdef0123456789abcdef\n" // 32 hex digits: 128 bits
	for _, c := range []struct {
		name, text, secret string
		mode               os.FileMode
		want               []string
	}{
		{name: "every host needs a static address, even alone", text: `apiVersion: ssbuild/v1
name: t
installer:
  hosts:
    - {name: h1}
`, want: []string{`DIR/r.yaml:5:7: installer.hosts[0]: host h1 has no static address; every host needs one, the hosts find each other by them (address: 192.168.1.11/24)`}},
		{name: "each host without one at its entry", text: checkBase + `    - {name: h2}
    - name: h3
`, want: []string{
			`DIR/r.yaml:6:7: installer.hosts[1]: host h2 has no static address; every host needs one, the hosts find each other by them (address: 192.168.1.11/24)`,
			`DIR/r.yaml:7:7: installer.hosts[2]: host h3 has no static address; every host needs one, the hosts find each other by them (address: 192.168.1.11/24)`}},
		{name: "appliance config refused", text: checkBase + "cluster:\n  registrationPort: 9444\n", want: []string{
			"DIR/r.yaml:7:3: cluster: the installer would refuse the hosts' appliance config: cluster.registryPort: 9444 is the registrationPort too: give the registry its own port"}},
		{name: "stack image not pre-loaded", text: checkBase + `deployments:
  - name: d
    chain: regtest
    stack: demo
    primaryDomain: demo.example
    instances: {clams: {enabled: false}}
`, want: []string{
			`DIR/r.yaml:9:12: deployments[0].stack: deployment d, www instance, service ghost-demo-example (recipes/stacks/demo/www.yaml:80): image ssbuild-demo/web is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/web:<tag>, and its digest) so the base image pre-loads it`,
			`DIR/r.yaml:9:12: deployments[0].stack: deployment d, www instance, service proxy (recipes/stacks/demo/www.yaml:28): image ssbuild-demo/web is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/web:<tag>, and its digest) so the base image pre-loads it`,
			`DIR/r.yaml:9:12: deployments[0].stack: deployment d, btcpay instance, service btcpay (recipes/stacks/demo/btcpay.yaml:43): image ssbuild-demo/postgres is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/postgres:<tag>, and its digest) so the base image pre-loads it`,
			`DIR/r.yaml:9:12: deployments[0].stack: deployment d, btcpay instance, service btcpay-db (recipes/stacks/demo/btcpay.yaml:20): image ssbuild-demo/postgres is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/postgres:<tag>, and its digest) so the base image pre-loads it`,
			`DIR/r.yaml:9:12: deployments[0].stack: deployment d, btcpay instance, service lightning (recipes/stacks/demo/btcpay.yaml:85): image ssbuild-demo/web is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/web:<tag>, and its digest) so the base image pre-loads it`}},
		{name: "stack images pre-loaded", text: checkBase + `image:
  dockerImages: [{ref: "ssbuild-demo/web:1"}, {ref: "ssbuild-demo/postgres:15"}]
deployments:
  - {name: d, chain: regtest, stack: demo, primaryDomain: demo.example, instances: {clams: {enabled: false}}}
`},
		{name: "good secret", text: checkBase + "cluster:\n  secret: {file: cluster.secret}\n", secret: good, mode: 0o600},
		{name: "short secret", text: checkBase + "cluster:\n  secret: {file: cluster.secret}\n", secret: "0123456789abcdef0123\n", mode: 0o600,
			want: []string{"DIR/r.yaml:7:18: cluster.secret.file: cluster secret DIR/cluster.secret: 20 characters, want at least 32 (128 bits as hex): make one with `openssl rand -hex 32`, or let the build generate it (generate: true)"}},
		{name: "low-diversity secret", text: checkBase + "cluster:\n  secret: {file: cluster.secret}\n", secret: strings.Repeat("ab", 20), mode: 0o600,
			want: []string{"DIR/r.yaml:7:18: cluster.secret.file: cluster secret DIR/cluster.secret: only 2 different characters, want at least 8 (a random secret has more): make one with `openssl rand -hex 32`"}},
		{name: "secret readable by others", text: checkBase + "cluster:\n  secret: {file: cluster.secret}\n", secret: good, mode: 0o640,
			want: []string{"DIR/r.yaml:7:18: cluster.secret.file: cluster secret DIR/cluster.secret: mode 0640 lets others read it: want 0600 (chmod 600 DIR/cluster.secret)"}},
		{name: "secret missing", text: checkBase + "cluster:\n  secret: {file: cluster.secret}\n",
			want: []string{"DIR/r.yaml:7:18: cluster.secret.file: DIR/cluster.secret does not exist (the cluster secret); relative paths start at the recipe's folder"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := validate(t, c.text, c.secret, c.mode)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("problems differ\n got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
			for _, p := range got {
				if c.secret != "" && strings.Contains(p, strings.TrimSpace(c.secret)) {
					t.Errorf("a problem shows the secret: %s", p)
				}
			}
		})
	}
}

// A secret another user owns could be changed under the build.
func TestValidateRefusesASecretOfAnotherUser(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "cluster.secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(secret, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "r.yaml")
	if err := os.WriteFile(path, []byte(checkBase+"cluster:\n  secret: {file: cluster.secret}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := recipes.Validate(path, config.CheckRecipe)
	ps := recipes.Problems(err)
	if len(ps) != 1 || ps[0].Line != 7 || ps[0].Path != "cluster.secret.file" || !strings.Contains(ps[0].Message, "owned by uid 65534, not by the user running the build (uid 0)") {
		t.Errorf("problems: %v", err)
	}
}

func TestShippedRecipesPassValidate(t *testing.T) {
	for _, name := range recipes.Builtins() {
		if _, err := recipes.Validate(name, config.CheckRecipe, stack.CheckImages); err != nil {
			t.Errorf("shipped recipe %s:\n%v", name, err)
		}
	}
}
