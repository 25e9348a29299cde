package ssimport

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// Render must work for any valid recipe, not only imported ones: the
// shipped recipes differ from the defaults in suite, types and sizes.
func TestRenderShippedRecipes(t *testing.T) {
	for _, name := range recipes.Builtins() {
		r, err := recipes.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := Render(r, Input{Project: "p.conf"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back, err := recipes.Parse("rendered", out, "")
		if err != nil {
			t.Fatalf("%s: rendered recipe does not load: %v\n%s", name, err, out)
		}
		full, _ := recipes.Marshal(r)
		again, _ := recipes.Marshal(back)
		if !bytes.Equal(full, again) {
			t.Errorf("%s: rendered recipe loads to another recipe:\n%s", name, out)
		}
		if len(out) >= len(full) {
			t.Errorf("%s: rendered %d bytes, the full recipe has %d: defaults were not left out", name, len(out), len(full))
		}
		if !strings.HasPrefix(string(out), "# Imported by `ssbuild recipe import` from a Sovereign Stack configuration:\n#   project.conf: p.conf\n") {
			t.Errorf("%s: header does not name the source:\n%s", name, out)
		}
	}
}

func TestRenderHeaderKeepsPathsOnOneLine(t *testing.T) {
	h := string(header(Input{Remote: "a\nb: c"}))
	if !strings.Contains(h, `#   remote.conf:  "a\nb: c"`+"\n") {
		t.Errorf("a path with a newline broke out of its comment:\n%s", h)
	}
}

func TestImportFileErrors(t *testing.T) {
	if _, _, err := Import(Input{}); err == nil || err.Error() != "nothing to import: give a remote.conf, a project.conf or site.conf files" {
		t.Errorf("empty input: %v", err)
	}
	_, _, err := Import(Input{Remote: set2308.Remote, Sites: []string{"testdata/no/such/site.conf"}})
	if err == nil || !strings.Contains(err.Error(), "testdata/no/such/site.conf") {
		t.Errorf("missing file: %v, want an error naming it", err)
	}
}
