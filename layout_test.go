// The module's layout rules, checked so that they stay true: the stages
// hand over only through handoff/, and the test kits stay out of what ships.
package layout_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/sovereign-stack/ssbuild/"

// imports maps each package of the module (relative path) to the module
// packages it imports outside its tests.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		p := strings.TrimPrefix(f[0], module)
		m[p] = nil
		for _, imp := range f[1:] {
			if rel, ok := strings.CutPrefix(imp, module); ok {
				m[p] = append(m[p], rel)
			}
		}
	}
	return m
}

func tree(p string) string { return strings.SplitN(p, "/", 2)[0] }

// TestStagesHandOverThroughHandoff: images/ (the builds) and appliance/
// (what runs on the hosts) never import each other; what one leaves for the
// other is owned by a handoff/ package, which imports neither.
func TestStagesHandOverThroughHandoff(t *testing.T) {
	for p, deps := range imports(t) {
		for _, d := range deps {
			switch {
			case tree(p) == "images" && tree(d) == "appliance", tree(p) == "appliance" && tree(d) == "images":
				t.Errorf("%s imports %s: a stage reads another's output only through a handoff/ package", p, d)
			case tree(p) == "handoff" && (tree(d) == "images" || tree(d) == "appliance"):
				t.Errorf("handoff package %s imports %s: a hand-off owner depends on neither side", p, d)
			}
		}
	}
}

// TestProductNeverImportsTestKits: the test kits (testkit/) are for tests
// and the demo script; nothing that ships imports them.
func TestProductNeverImportsTestKits(t *testing.T) {
	for p, deps := range imports(t) {
		if tree(p) == "testkit" || tree(p) == "scripts" {
			continue
		}
		for _, d := range deps {
			if tree(d) == "testkit" {
				t.Errorf("%s imports the test kit %s", p, d)
			}
		}
	}
}

// TestHandoffNamesDefinedOnce: a name one stage writes and another reads is
// spelled in one package only, its owner; everyone else uses the constant.
func TestHandoffNamesDefinedOnce(t *testing.T) {
	owner := map[string]string{
		"SSBUILD-ESP":     "handoff/stick",
		"SSBUILD-PAYLOAD": "handoff/stick",
		"os.img":          "handoff/stick",
		"base-image":      "handoff/stick",
		"recipe.yaml":     "handoff/stick",
		"cluster.secret":  "handoff/stick",
		"ssbuild.host":    "handoff/stick",
		"ssbuild-os":      "handoff/hostdisk",
		"ssbuild-zfs":     "handoff/hostdisk",
		"SHA256SUMS":      "internal/signature",
		"metadata.tar.gz": "handoff/imagedir",
		"rootfs.squashfs": "handoff/imagedir",
		"modules.load":    "handoff/modload",
	}
	// Where the same characters mean something else.
	other := map[string][]string{
		"base-image":     {"cmd/ssbuild"},                      // the installer's --base-image flag
		"cluster.secret": {"recipes", "images/installerbuild"}, // a recipe field path; the generated secret's file in the output
		"recipe.yaml":    {"images/installerbuild"},            // the build's own work file
	}
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testkit" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(filepath.Dir(path))
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			want, named := owner[s]
			if !named || pkg == want {
				return true
			}
			for _, p := range other[s] {
				if pkg == p {
					return true
				}
			}
			t.Errorf("%s: %q is spelled here; use the constant of its owner %s", fset.Position(lit.Pos()), s, want)
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
