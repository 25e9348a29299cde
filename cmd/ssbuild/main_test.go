package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// ssbuild runs the CLI in-process and returns its exit code and output.
func ssbuild(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(append([]string{"ssbuild"}, args...), strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const badRecipe = `apiVersion: ssbuild/v1
name: t
installer:
  hosts: [{name: nuc1, address: 10.0.0.1/24}, {name: nuc1, address: 10.0.0.2/24}]
cluster:
  initiator: nuc7
  storage: {driver: lvm}
`

func TestVersion(t *testing.T) {
	code, out, _ := ssbuild(t, "version")
	if code != 0 || !strings.HasPrefix(out, "ssbuild ") || !strings.Contains(out, recipes.APIVersion) {
		t.Fatalf("version: code %d, %q", code, out)
	}
}

func TestValidateShippedRecipes(t *testing.T) {
	for _, name := range []string{"", "default", "demo"} {
		args := []string{"recipe", "validate"}
		if name != "" {
			args = append(args, name)
		}
		code, out, errOut := ssbuild(t, args...)
		if code != 0 || !strings.Contains(out, ": valid (") {
			t.Errorf("validate %q: code %d\n%s%s", name, code, out, errOut)
		}
	}
}

func TestValidateReportsEveryProblemWithExitCode3(t *testing.T) {
	path := writeFile(t, "bad.yaml", badRecipe)
	code, out, errOut := ssbuild(t, "recipe", "validate", path)
	if code != exitInvalid {
		t.Fatalf("exit code %d, want %d", code, exitInvalid)
	}
	want := []string{
		path + `:4:54: installer.hosts[1].name: "nuc1" is already the name of installer.hosts[0]`,
		path + `:6:14: cluster.initiator: "nuc7" is not one of installer.hosts (nuc1, nuc1)`,
		path + `:7:21: cluster.storage.driver: "lvm" is not allowed (allowed: zfs, btrfs, dir)`,
		"3 problems",
	}
	if got := strings.TrimSpace(errOut); got != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if out != "" {
		t.Errorf("stdout should be empty, got %q", out)
	}

	code, out, _ = ssbuild(t, "recipe", "validate", "--json", path)
	var res struct {
		Valid    bool
		Problems []recipes.Problem
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != exitInvalid {
		t.Fatalf("--json: code %d, %v: %s", code, err, out)
	}
	if res.Valid || len(res.Problems) != 3 || res.Problems[2].Line != 7 || res.Problems[2].Path != "cluster.storage.driver" {
		t.Errorf("--json problems: %+v", res)
	}
}

func TestShowPrintsAnEffectiveRecipeThatLoadsAgain(t *testing.T) {
	code, out, errOut := ssbuild(t, "recipe", "show", "demo")
	if code != 0 {
		t.Fatalf("show: %d %s", code, errOut)
	}
	r, err := recipes.Parse("shown.yaml", []byte(out), "")
	if err != nil {
		t.Fatalf("shown recipe does not load: %v", err)
	}
	// Defaults that demo.yaml does not write are visible.
	if r.Cluster.RegistrationPort != 9443 || r.Image.Source.Keyring == "" || !strings.Contains(out, "registrationPort: 9443") {
		t.Errorf("defaults not shown: port %d keyring %q", r.Cluster.RegistrationPort, r.Image.Source.Keyring)
	}

	code, out, _ = ssbuild(t, "recipe", "show", "--json", "demo")
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 {
		t.Fatalf("show --json: %d %v", code, err)
	}
	if src := v["image"].(map[string]any)["source"].(map[string]any); src["suite"] != "bookworm" {
		t.Errorf("json suite = %v", src["suite"])
	}

	code, out, _ = ssbuild(t, "recipe", "show", "--raw", "demo")
	raw, _ := recipes.BuiltinSource("demo")
	if code != 0 || out != string(raw) {
		t.Errorf("show --raw differs from the shipped demo recipe")
	}
}

func TestSchemaIsJSON(t *testing.T) {
	code, out, _ := ssbuild(t, "recipe", "schema")
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v["type"] != "object" {
		t.Fatalf("schema: code %d, %v", code, err)
	}
}

func TestPlan(t *testing.T) {
	code, out, errOut := ssbuild(t, "plan", "--recipe", "demo")
	if code != 0 {
		t.Fatalf("plan: %d %s", code, errOut)
	}
	for _, want := range []string{"debootstrap bookworm", "install 3 hosts: demo1 (10.99.0.11/24, 02:5e:00:00:01:01), demo2 (10.99.0.12/24, 02:5e:00:00:01:02), demo3 (10.99.0.13/24, 02:5e:00:00:01:03)",
		"demo1 bootstraps it", "project demo-regtest", "clams: disabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = ssbuild(t, "plan", "--json")
	var p struct {
		Recipe string
		Stages []recipes.Stage
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil || code != 0 || p.Recipe != "sovereign-stack" || len(p.Stages) != 4 {
		t.Fatalf("plan --json of the default recipe: code %d, %v, %+v", code, err, p)
	}
	// A bad recipe is refused with the problems and exit code 3.
	code, _, errOut = ssbuild(t, "plan", "--recipe", writeFile(t, "bad.yaml", badRecipe))
	if code != exitInvalid || !strings.Contains(errOut, "3 problems") {
		t.Errorf("plan of a bad recipe: code %d, %s", code, errOut)
	}
}

func TestUsageAndFailureExitCodes(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"frobnicate"}, exitUsage, `no command "frobnicate"`},
		{[]string{"recipe", "frob"}, exitUsage, `no command "frob"`},
		{[]string{"plan", "--bogus"}, exitUsage, "flag provided but not defined: -bogus"},
		{[]string{"recipe", "validate", "a", "b"}, exitUsage, "validate takes one recipe, got 2 arguments"},
		{[]string{"completion", "tcsh"}, exitUsage, "completion needs a shell: bash, zsh or fish"},
		{[]string{"recipe", "validate", "/nonexistent/r.yaml"}, exitInvalid, "read recipe: open /nonexistent/r.yaml: no such file or directory"},
		{[]string{"recipe", "show", "nosuch"}, exitInvalid, `no shipped recipe "nosuch" (shipped: default, demo)`},
		{[]string{"down", "--recipe", "demo"}, exitUsage, "down takes one deployment name"},
		{[]string{"down", "--recipe", "demo", "nosuch"}, exitUsage, `the recipe has no deployment "nosuch" (it has: demo)`},
		{[]string{"deploy", "--recipe", "demo", "--lxd-dir", "/nonexistent"}, exitFailed, "connect to LXD at /nonexistent/unix.socket"},
		{[]string{"show", "--recipe", "demo", "extra"}, exitUsage, "show takes no arguments"},
		{[]string{"migrate", "--recipe", "demo", "demo"}, exitUsage, "migrate takes a deployment and an instance name"},
		{[]string{"migrate", "--recipe", "demo", "demo", "btcpay"}, exitUsage, "migrate needs --to MEMBER"},
		{[]string{"migrate", "--recipe", "demo", "--to", "host2", "nosuch", "btcpay"}, exitUsage, `the recipe has no deployment "nosuch"`},
	} {
		code, _, errOut := ssbuild(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("%v: code %d, stderr %q; want code %d and %q", c.args, code, errOut, c.code, c.msg)
		}
	}
}

func TestHelpOnEveryCommand(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"recipe", "--help"}, {"recipe", "validate", "--help"},
		{"recipe", "show", "--help"}, {"recipe", "schema", "--help"}, {"recipe", "import", "--help"},
		{"plan", "--help"}, {"image", "--help"}, {"installer", "--help"}, {"load-docker-images", "--help"},
		{"appliance", "--help"}, {"appliance", "run", "--help"}, {"appliance", "status", "--help"},
		{"cluster", "--help"}, {"cluster", "rotate-secret", "--help"},
		{"host", "--help"}, {"host", "remove", "--help"}, {"host", "replace", "--help"},
		{"version", "--help"}, {"completion", "--help"}, {"man", "--help"}, {"deploy", "--help"}, {"down", "--help"},
		{"show", "--help"}, {"proxy", "--help"}, {"migrate", "--help"}, {"restore", "--help"},
		{"lightning", "--help"}, {"lightning", "recover", "--help"}} {
		code, out, _ := ssbuild(t, args...)
		if code != 0 || !strings.Contains(out, "USAGE:") {
			t.Errorf("%v: code %d, no usage:\n%s", args, code, out)
		}
	}
}

func TestCompletion(t *testing.T) {
	code, script, _ := ssbuild(t, "completion", "bash")
	if code != 0 {
		t.Fatal(code)
	}
	// The script must be valid bash.
	if bash, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bash -n: %v %s", err, out)
		}
	}
	// What the script asks the binary for: the commands at each level.
	// urfave/cli reads os.Args (not the arguments given to Run) to decide
	// between flag and command candidates, so make them what a shell passes.
	saved := os.Args
	defer func() { os.Args = saved }()
	os.Args = []string{"ssbuild", "--generate-bash-completion"}
	_, out, _ := ssbuild(t, "--generate-bash-completion")
	for _, want := range []string{"recipe", "plan", "image", "installer", "appliance", "version", "completion"} {
		if !strings.Contains(out, want) {
			t.Errorf("top-level completion lacks %q: %q", want, out)
		}
	}
	os.Args = []string{"ssbuild", "recipe", "--generate-bash-completion"}
	_, out, _ = ssbuild(t, "recipe", "--generate-bash-completion")
	for _, want := range []string{"validate", "show", "schema", "import"} {
		if !strings.Contains(out, want) {
			t.Errorf("recipe completion lacks %q: %q", want, out)
		}
	}
}

func TestImportWritesALoadableRecipeAndNoSecret(t *testing.T) {
	dir := filepath.Join("..", "..", "recipes", "ssimport", "testdata", "2308")
	remote := filepath.Join(dir, "remotes", "home", "remote.conf")
	project := filepath.Join(dir, "projects", "staging-testnet", "project.conf")
	site := filepath.Join(dir, "sites", "example.org", "site.conf")
	code, out, errOut := ssbuild(t, "recipe", "import", "--remote", remote, "--project", project, "--site", site)
	if code != 0 {
		t.Fatalf("import: code %d\n%s", code, errOut)
	}
	r, err := recipes.Parse("imported.yaml", []byte(out), "")
	if err != nil {
		t.Fatalf("imported recipe does not load: %v\n%s", err, out)
	}
	if len(r.Deployments) != 1 || r.Deployments[0].Project() != "staging-testnet" {
		t.Errorf("deployments: %+v", r.Deployments)
	}
	if !strings.Contains(errOut, "warning: "+remote+":2: LXD_REMOTE_PASSWORD: secret not imported") {
		t.Errorf("no warning for the remote password:\n%s", errOut)
	}
	// No value of a secret key of the sources may appear anywhere.
	for _, f := range []string{remote, site} {
		text, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(text), "\n") {
			k, v, ok := strings.Cut(line, "=")
			v = strings.Trim(v, `"'`)
			if ok && (strings.Contains(k, "PASSWORD") || strings.Contains(k, "PASSPHRASE")) && len(v) > 3 {
				if strings.Contains(out, v) || strings.Contains(errOut, v) {
					t.Errorf("secret value of %s leaked into the output", k)
				}
			}
		}
	}
	code, _, errOut = ssbuild(t, "recipe", "import")
	if code != exitUsage || !strings.Contains(errOut, "import needs at least one of --remote, --project, --site") {
		t.Errorf("import without files: code %d, %s", code, errOut)
	}
}
