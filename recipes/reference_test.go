package recipes

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var updateReadme = flag.Bool("update-readme", false, "rewrite the recipe reference in docs/recipe.md")

const (
	refStart = "<!-- recipe-reference:start (generated from recipes/recipe.go: go test ./recipes -run TestReadme -update-readme) -->\n"
	refEnd   = "<!-- recipe-reference:end -->"
)

// TestReadmeReferenceIsCurrent keeps docs/recipe.md's field table equal to the
// Go types, so the documentation cannot drift from what the loader reads.
func TestReadmeReferenceIsCurrent(t *testing.T) {
	const path = "../docs/recipe.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i, j := strings.Index(text, refStart), strings.Index(text, refEnd)
	if i < 0 || j < i {
		t.Fatalf("docs/recipe.md lacks the reference markers %q ... %q", refStart, refEnd)
	}
	current := text[i+len(refStart) : j]
	if current == Reference() {
		return
	}
	if !*updateReadme {
		t.Fatal("docs/recipe.md's recipe reference is out of date: run go test ./recipes -run TestReadme -update-readme")
	}
	text = text[:i+len(refStart)] + Reference() + text[j:]
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
