package stack

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
)

var update = flag.Bool("update", false, "re-record the golden files in testdata/")

// fakeSecrets gives every secret a readable, fixed value, so golden files
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
