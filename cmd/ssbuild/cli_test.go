package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

func TestVersionFlag(t *testing.T) {
	_, want, _ := ssbuild(t, "version")
	for _, flag := range []string{"--version", "-v"} {
		code, out, errOut := ssbuild(t, flag)
		if code != 0 || out != want {
			t.Errorf("%s: code %d, %q (stderr %q); want %q as ssbuild version prints", flag, code, out, errOut, want)
		}
	}
}

// A recipe or config that is missing, unreadable or unknown is invalid
// input (exit code 3) in every command that reads one.
func TestUnreadableInputExitsInvalid(t *testing.T) {
	unreadable := writeFile(t, "secret.yaml", "apiVersion: ssbuild/v1\n")
	if err := os.Chmod(unreadable, 0); err != nil {
		t.Fatal(err)
	}
	notDir := writeFile(t, "image", "not a folder")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"recipe", "validate", "/nonexistent.yaml"}, "read recipe: open /nonexistent.yaml: no such file or directory"},
		{[]string{"recipe", "validate", "--json", "/nonexistent.yaml"}, "read recipe: open /nonexistent.yaml"},
		{[]string{"recipe", "validate", "nosuch"}, `no shipped recipe "nosuch"`},
		{[]string{"recipe", "show", "/nonexistent.yaml"}, "read recipe: open /nonexistent.yaml"},
		{[]string{"recipe", "show", "--raw", "nosuch"}, `no shipped recipe "nosuch"`},
		{[]string{"plan", "--recipe", "/nope"}, "read recipe: open /nope: no such file or directory"},
		{[]string{"image", "--recipe", "/nope"}, "read recipe: open /nope"},
		{[]string{"installer", "--recipe", "/nope"}, "read recipe: open /nope"},
		{[]string{"deploy", "--recipe", "/nope"}, "read recipe: open /nope"},
		{[]string{"down", "--recipe", "/nope", "demo"}, "read recipe: open /nope"},
		{[]string{"show", "--recipe", "/nope"}, "read recipe: open /nope"},
		{[]string{"appliance", "run", "--config", "/nonexistent/appliance.yaml"}, "appliance config: open /nonexistent/appliance.yaml"},
		{[]string{"appliance", "status", "--config", "/nonexistent/appliance.yaml"}, "appliance config: open /nonexistent/appliance.yaml"},
		{[]string{"cluster", "rotate-secret", "--config", "/nonexistent/appliance.yaml", "--out", "/nonexistent/new.secret"}, "appliance config: open /nonexistent/appliance.yaml"},
		{[]string{"host", "remove", "--config", "/nonexistent/appliance.yaml", "host3"}, "appliance config: open /nonexistent/appliance.yaml"},
		{[]string{"recipe", "import", "--project", "/nonexistent/project.conf"}, "import: open /nonexistent/project.conf"},
		{[]string{"deploy", "--recipe", "demo", "--image", "/nonexistent/image"}, "--image: stat /nonexistent/image: no such file or directory"},
		{[]string{"installer", "--recipe", "demo", "--base-image", "/nonexistent/image"}, "--base-image: stat /nonexistent/image"},
		{[]string{"installer", "--recipe", "demo", "--base-image", notDir}, "--base-image " + notDir + ": not a folder"},
		{[]string{"load-docker-images", "--dir", "/nonexistent/images"}, "docker image manifest: open /nonexistent/images/"},
	} {
		code, out, errOut := ssbuild(t, c.args...)
		if code != exitInvalid || !strings.HasPrefix(errOut, "ssbuild: ") || !strings.Contains(errOut, c.msg) {
			t.Errorf("%v: code %d, stderr %q; want code %d and ssbuild: ...%q", c.args, code, errOut, exitInvalid, c.msg)
		}
		if strings.Contains(strings.Join(c.args, " "), "--json") {
			var res struct {
				Valid    bool
				Problems []struct{ File, Message string }
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || res.Valid || len(res.Problems) != 1 ||
				res.Problems[0].File != "/nonexistent.yaml" || !strings.Contains(res.Problems[0].Message, c.msg) {
				t.Errorf("%v: stdout %q, want the problem as JSON", c.args, out)
			}
			continue
		}
		if out != "" {
			t.Errorf("%v: stdout %q, want none", c.args, out)
		}
	}
	if os.Geteuid() != 0 { // root reads a 0000 file
		code, _, errOut := ssbuild(t, "plan", "--recipe", unreadable)
		if code != exitInvalid || !strings.Contains(errOut, "permission denied") {
			t.Errorf("plan of an unreadable recipe: code %d, %q", code, errOut)
		}
	}
	// The cluster secret an appliance config names is input too.
	dir := t.TempDir()
	cfg := filepath.Join(dir, "appliance.yaml")
	conf := "host: {name: host1, address: 10.0.0.11}\n" +
		"cluster:\n  name: demo\n  initiator: host1\n  initiatorAddress: 10.0.0.11\n" +
		"  members: [{name: host1, address: 10.0.0.11}]\n" +
		"  storage: {pool: local, driver: dir, source: /var/lib/ssbuild/pool}\n" +
		"secretFile: " + filepath.Join(dir, "no.secret") + "\nstateDir: " + dir + "\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := ssbuild(t, "appliance", "run", "--config", cfg, "--lxd-dir", "/nonexistent")
	if code != exitInvalid || !strings.Contains(errOut, "cluster secret") {
		t.Errorf("appliance run without its secret file: code %d, %q", code, errOut)
	}
}

func TestFlagsFirst(t *testing.T) {
	app := newApp(strings.NewReader(""), &strings.Builder{}, &strings.Builder{})
	for _, c := range []struct{ in, want string }{
		{"ssbuild down mysite --purge", "ssbuild down --purge mysite"},
		{"ssbuild down mysite --recipe demo -y", "ssbuild down --recipe demo -y mysite"},
		{"ssbuild down mysite -r=demo", "ssbuild down -r=demo mysite"},
		{"ssbuild recipe validate demo --json", "ssbuild recipe validate --json demo"},
		{"ssbuild deploy a --parallel 2 b", "ssbuild deploy --parallel 2 a b"},
		{"ssbuild deploy a -- --b", "ssbuild deploy a -- --b"},
		{"ssbuild image --epoch -1", "ssbuild image --epoch -1"},
		{"ssbuild recipe show demo --bogus", "ssbuild recipe show --bogus demo"},
		{"ssbuild recipe demo --json", "ssbuild recipe demo --json"}, // a group: left to its own error
		{"ssbuild --version", "ssbuild --version"},
		{"ssbuild down x --generate-bash-completion", "ssbuild down x --generate-bash-completion"},
	} {
		if got := strings.Join(flagsFirst(app, strings.Fields(c.in)), " "); got != c.want {
			t.Errorf("flagsFirst(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

// A flag after the positional arguments is honoured, not dropped.
func TestFlagAfterArguments(t *testing.T) {
	code, out, errOut := ssbuild(t, "recipe", "validate", "demo", "--json")
	var res struct{ Valid bool }
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || !res.Valid {
		t.Errorf("recipe validate demo --json: code %d, %v, %q %q", code, err, out, errOut)
	}
	code, out, _ = ssbuild(t, "recipe", "show", "demo", "--raw")
	if raw, _ := os.ReadFile("../../recipes/demo.yaml"); code != 0 || (len(raw) > 0 && out != string(raw)) || strings.HasPrefix(out, "# effective") {
		t.Errorf("recipe show demo --raw: code %d, not the raw recipe:\n%.200s", code, out)
	}
	// --recipe and --lxd-dir after the deployment name are both used: the
	// name is found in demo (not in default) and LXD is asked at the dir.
	code, _, errOut = ssbuild(t, "down", "demo", "--purge", "--recipe", "demo", "--lxd-dir", "/nonexistent")
	if code != exitFailed || !strings.Contains(errOut, "connect to LXD at /nonexistent/unix.socket") {
		t.Errorf("down demo --purge --recipe demo --lxd-dir /nonexistent: code %d, %q", code, errOut)
	}
	code, _, errOut = ssbuild(t, "down", "demo", "--purge", "--bogus")
	if code != exitUsage || !strings.Contains(errOut, "flag provided but not defined: -bogus") {
		t.Errorf("down demo --purge --bogus: code %d, %q", code, errOut)
	}
	code, _, errOut = ssbuild(t, "deploy", "nosuch", "-r", "demo")
	if code != exitUsage || !strings.Contains(errOut, `the recipe has no deployment "nosuch" (it has: demo)`) {
		t.Errorf("deploy nosuch -r demo: code %d, %q", code, errOut)
	}
}

func TestRecipeFromEnvironment(t *testing.T) {
	t.Setenv("SSBUILD_RECIPE", "demo")
	code, out, errOut := ssbuild(t, "recipe", "validate")
	if code != 0 || !strings.HasPrefix(out, "builtin:demo: valid") {
		t.Errorf("recipe validate: code %d, %q %q", code, out, errOut)
	}
	code, out, _ = ssbuild(t, "recipe", "show")
	if code != 0 || !strings.Contains(out, "effective recipe from builtin:demo") {
		t.Errorf("recipe show: code %d, %.100q", code, out)
	}
	code, out, _ = ssbuild(t, "recipe", "show", "--raw")
	if raw, _ := os.ReadFile("../../recipes/demo.yaml"); code != 0 || out != string(raw) {
		t.Errorf("recipe show --raw: code %d, not demo's source", code)
	}
	code, out, _ = ssbuild(t, "plan")
	if code != 0 || !strings.Contains(out, "project demo-regtest") {
		t.Errorf("plan: code %d, %q", code, out)
	}
	// A command line recipe wins over the environment.
	if code, out, _ = ssbuild(t, "recipe", "validate", "default"); code != 0 || !strings.HasPrefix(out, "builtin:default:") {
		t.Errorf("recipe validate default: code %d, %q", code, out)
	}
	// Every command that loads a recipe reads the one named there first.
	t.Setenv("SSBUILD_RECIPE", "/nonexistent/env.yaml")
	for _, args := range [][]string{{"recipe", "validate"}, {"recipe", "show"}, {"plan"}, {"image"},
		{"installer"}, {"deploy"}, {"down", "demo"}, {"show"}} {
		code, _, errOut := ssbuild(t, args...)
		if code != exitInvalid || !strings.Contains(errOut, "/nonexistent/env.yaml") {
			t.Errorf("%v with SSBUILD_RECIPE=/nonexistent/env.yaml: code %d, %q", args, code, errOut)
		}
	}
}

func TestFishCompletion(t *testing.T) {
	code, out, errOut := ssbuild(t, "completion", "fish")
	if code != 0 {
		t.Fatalf("completion fish: code %d, %s", code, errOut)
	}
	for _, want := range []string{"complete -c ssbuild", "__fish_seen_subcommand_from recipe", "-a 'validate'", "-l recipe", "RECIPE file"} {
		if !strings.Contains(out, want) {
			t.Errorf("fish completion lacks %q", want)
		}
	}
	if strings.Contains(out, "`") {
		t.Errorf("fish completion shows the usage's backticks")
	}
}

// The fish script must be valid fish.
func TestFishCompletionParses(t *testing.T) {
	testenv.RequireTools(t, "fish")
	_, out, _ := ssbuild(t, "completion", "fish")
	cmd := exec.Command("fish", "--no-execute")
	cmd.Stdin = strings.NewReader(out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("fish --no-execute: %v %s", err, msg)
	}
	// What fish offers after `ssbuild down --` and `ssbuild recipe `.
	script := filepath.Join(t.TempDir(), "ssbuild.fish")
	if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	for line, want := range map[string][]string{
		"ssbuild down --": {"--purge\t", "--recipe\tRECIPE file", "--lxd-dir\t"},
		"ssbuild recipe ": {"validate\t", "import\t"},
	} {
		got, err := exec.Command("fish", "--no-config", "-c", "source "+script+"; complete -C '"+line+"'").CombinedOutput()
		if err != nil {
			t.Fatalf("fish complete -C %q: %v %s", line, err, got)
		}
		for _, w := range want {
			if !strings.Contains(string(got), w) {
				t.Errorf("fish offers no %q after %q:\n%s", w, line, got)
			}
		}
	}
}

func TestManPage(t *testing.T) {
	code, out, errOut := ssbuild(t, "man")
	if code != 0 || !strings.HasPrefix(out, ".nh\n.TH ssbuild 1") {
		t.Fatalf("man: code %d, %.60q %s", code, out, errOut)
	}
	for _, want := range []string{".SS validate", ".SH installer", "--base-image", ".SH deploy", "SSBUILD_RECIPE", "Exit codes"} {
		if !strings.Contains(out, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
}

// man renders the page without warnings.
func TestManPageRenders(t *testing.T) {
	testenv.RequireTools(t, "man")
	_, page, _ := ssbuild(t, "man")
	cmd := exec.Command("man", "--warnings", "-l", "-")
	cmd.Stdin = strings.NewReader(page)
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=80")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	text, err := cmd.Output()
	if err != nil || !strings.Contains(string(text), "--base-image") || !strings.Contains(string(text), "Exit codes") {
		t.Errorf("man -l: %v %s\n%.300s", err, stderr.String(), text)
	}
	if stderr.Len() > 0 {
		t.Errorf("man warnings: %s", stderr.String())
	}
}

// placeholder is what a value flag's help shows for its value: upper-case
// words (DIR, FILE, N, HOST=URL), never urfave/cli's "value" nor a word
// lifted from backticks in the usage text.
var placeholder = regexp.MustCompile(`^[A-Z][A-Z0-9_]*([=|][A-Z][A-Z0-9_]*)*$`)

func TestHelpPlaceholders(t *testing.T) {
	app := newApp(strings.NewReader(""), &strings.Builder{}, &strings.Builder{})
	var paths [][]string
	var walk func(prefix []string, cmds []*cli.Command)
	walk = func(prefix []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(append([]string{}, prefix...), c.Name)
			paths = append(paths, p)
			walk(p, c.Subcommands)
		}
	}
	walk(nil, app.Commands)
	paths = append(paths, nil)
	flagLines := 0
	for _, p := range paths {
		code, out, errOut := ssbuild(t, append(p, "--help")...)
		if code != 0 || !strings.Contains(out, "USAGE:") {
			t.Errorf("%v --help: code %d %s", p, code, errOut)
			continue
		}
		inOptions := false
		for _, line := range strings.Split(out, "\n") {
			if line != "" && line[0] != ' ' { // a section: NAME:, OPTIONS:, GLOBAL OPTIONS:...
				inOptions = strings.HasSuffix(line, "OPTIONS:")
				continue
			}
			s := strings.TrimSpace(line)
			if !inOptions || !strings.HasPrefix(s, "-") {
				continue
			}
			if strings.Contains(s, "`") {
				t.Errorf("%v: a backtick in the help of a flag: %q", p, line)
			}
			// "--out DIR, -o DIR   usage": the names end at the first double space.
			spec, _, _ := strings.Cut(s, "  ")
			spec = strings.NewReplacer("[ ", "", " ]", "").Replace(spec) // slices: --site FILE [ --site FILE ]
			flagLines++
			for _, part := range strings.Split(spec, ", ") {
				for _, f := range strings.Split(part, " --") {
					fields := strings.Fields(f)
					if len(fields) > 2 {
						t.Errorf("%v: flag %q has a placeholder of several words: %q", p, fields[0], line)
						continue
					}
					if len(fields) == 2 && !placeholder.MatchString(fields[1]) {
						t.Errorf("%v: flag %q has placeholder %q, want an upper-case word like DIR, FILE, N: %q", p, fields[0], fields[1], line)
					}
				}
			}
		}
	}
	if flagLines < 40 {
		t.Errorf("only %d flag lines seen in the help: the test does not read the help format", flagLines)
	}
}

// The help placeholder test must catch what it is for.
func TestHelpPlaceholderPattern(t *testing.T) {
	for s, ok := range map[string]bool{"DIR": true, "FILE": true, "N": true, "HOST=URL": true, "RECIPE": true,
		"value": false, "ssbuild": false, "Dir": false, "": false} {
		if placeholder.MatchString(s) != ok {
			t.Errorf("placeholder %q: match %v, want %v", s, !ok, ok)
		}
	}
}

func TestImportJSON(t *testing.T) {
	dir := filepath.Join("..", "..", "recipes", "ssimport", "testdata", "2308")
	remote := filepath.Join(dir, "remotes", "home", "remote.conf")
	project := filepath.Join(dir, "projects", "staging-testnet", "project.conf")
	site := filepath.Join(dir, "sites", "example.org", "site.conf")
	code, out, errOut := ssbuild(t, "recipe", "import", "--remote", remote, "--project", project, "--site", site, "--json")
	if code != 0 {
		t.Fatalf("import --json: code %d\n%s", code, errOut)
	}
	if errOut != "" {
		t.Errorf("import --json wrote to stderr: %q", errOut)
	}
	var res struct {
		Recipe struct {
			APIVersion  string `json:"apiVersion"`
			Deployments []struct {
				Name  string `json:"name"`
				Chain string `json:"chain"`
			} `json:"deployments"`
		} `json:"recipe"`
		Warnings []struct {
			File, Key, Message string
			Line               int
		} `json:"warnings"`
		Problems []any `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if res.Recipe.APIVersion != "ssbuild/v1" || len(res.Recipe.Deployments) != 1 || res.Recipe.Deployments[0].Chain != "testnet" || res.Problems == nil || len(res.Problems) != 0 {
		t.Errorf("recipe: %+v, problems %v", res.Recipe, res.Problems)
	}
	found := false
	for _, w := range res.Warnings {
		if w.File == remote && w.Line == 2 && w.Key == "LXD_REMOTE_PASSWORD" && strings.HasPrefix(w.Message, "secret not imported") {
			found = true
		}
	}
	if !found {
		t.Errorf("no warning for the remote password: %+v", res.Warnings)
	}
	text, _ := os.ReadFile(remote)
	for _, line := range strings.Split(string(text), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.Contains(k, "PASSWORD") && len(strings.Trim(v, `"'`)) > 3 && strings.Contains(out, strings.Trim(v, `"'`)) {
			t.Errorf("secret value of %s in the JSON", k)
		}
	}

	// A failed import: exit code 3, the problems in the JSON.
	bad := writeFile(t, "project.conf", "PRIMARY_DOMAIN=a.example\nWWW_SERVER_CPU_COUNT+=1\n")
	code, out, _ = ssbuild(t, "recipe", "import", "--json", "--project", bad)
	var failed struct {
		Recipe   any
		Problems []struct{ Line int }
	}
	if err := json.Unmarshal([]byte(out), &failed); err != nil || code != exitInvalid || failed.Recipe != nil ||
		!reflect.DeepEqual(failed.Problems, []struct{ Line int }{{2}}) {
		t.Errorf("failed import --json: code %d, %v, %s", code, err, out)
	}
}

// A conf file as bash sources it (set -e, comments, source, if) imports,
// with a warning for each skipped statement instead of a failure.
func TestImportSkipsShellStatements(t *testing.T) {
	project := writeFile(t, "project.conf", "#!/bin/bash\nset -e\n# where the sites live\nsource ./common.conf\n"+
		"PRIMARY_DOMAIN=a.example\nif [ -n \"$BIG\" ]; then\n  WWW_SERVER_CPU_COUNT=8\nfi\n")
	code, out, errOut := ssbuild(t, "recipe", "import", "--project", project)
	if code != 0 {
		t.Fatalf("import: code %d\n%s", code, errOut)
	}
	for _, want := range []string{
		"warning: " + project + ":2: set skipped",
		"warning: " + project + ":4: source skipped: the file it reads is not imported",
		"warning: " + project + ":6: if skipped: its condition is not run",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, ":3:") || strings.Contains(errOut, ":8:") {
		t.Errorf("a comment or fi was warned about:\n%s", errOut)
	}
	r, err := recipes.Parse("imported.yaml", []byte(out), "")
	if err != nil {
		t.Fatalf("imported recipe does not load: %v", err)
	}
	if d := r.Deployments[0]; d.PrimaryDomain != "a.example" {
		t.Errorf("primary domain %q", d.PrimaryDomain)
	}
	if !strings.Contains(out, "cpus: 8") {
		t.Errorf("the assignment inside the if was not imported:\n%s", out)
	}
	code, out, _ = ssbuild(t, "recipe", "import", "--project", project, "--json")
	var res struct {
		Warnings []struct {
			Line    int
			Message string
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 {
		t.Fatalf("--json: code %d, %v", code, err)
	}
	lines := map[int]bool{}
	for _, w := range res.Warnings {
		lines[w.Line] = true
	}
	if !lines[2] || !lines[4] || !lines[6] {
		t.Errorf("--json warnings lack lines 2, 4, 6: %+v", res.Warnings)
	}
}

// TestBuildsRefuseWhatLaterStagesWould: plan, image and installer check a
// recipe as `recipe validate` does, so a host without an address (which the
// installer would refuse) or a stack image the image lacks (which deploy
// would refuse) stops them at once with exit 3, naming the field, and
// nothing is written.
func TestBuildsRefuseWhatLaterStagesWould(t *testing.T) {
	demo, err := recipes.BuiltinSource("demo")
	if err != nil {
		t.Fatal(err)
	}
	text := string(demo)
	for _, c := range []struct{ name, old, new, field string }{
		{"host without an address", `{name: demo2, mac: "02:5e:00:00:01:02", address: 10.99.0.12/24}`,
			`{name: demo2, mac: "02:5e:00:00:01:02"}`, "installer.hosts[1]"},
		{"stack image not in the image", "    - ref: ssbuild-demo/web:1\n", "    - ref: busybox:1\n", "image ssbuild-demo/web is not in the recipe's image.dockerImages"},
	} {
		bad := strings.Replace(text, c.old, c.new, 1)
		if bad == text {
			t.Fatalf("%s: the demo recipe no longer has %q", c.name, c.old)
		}
		rcp := writeFile(t, "recipe.yaml", bad)
		out := filepath.Join(t.TempDir(), "out")
		for _, args := range [][]string{{"plan", "--recipe", rcp}, {"image", "--recipe", rcp, "--out", out},
			{"installer", "--recipe", rcp, "--out", out}} {
			code, _, errOut := ssbuild(t, args...)
			if code != exitInvalid || !strings.Contains(errOut, c.field) {
				t.Errorf("%s: %s: code %d, stderr %q; want code %d naming %s", c.name, args[0], code, errOut, exitInvalid, c.field)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("%s: %s wrote %s", c.name, args[0], out)
			}
		}
	}
}
