package recipes

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The shipped recipes, embedded so the binary works without the source tree.
//
//go:embed default.yaml demo.yaml
var builtin embed.FS

// DefaultName is the recipe a command uses without --recipe.
const DefaultName = "default"

// Builtins lists the shipped recipe names.
func Builtins() []string { return []string{"default", "demo"} }

// BuiltinSource returns the YAML text of a shipped recipe.
func BuiltinSource(name string) ([]byte, error) {
	b, err := builtin.ReadFile(name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("no shipped recipe %q (shipped: %s)", name, strings.Join(Builtins(), ", "))
	}
	return b, nil
}

// Open loads a recipe by reference: the name of a shipped recipe
// (default, demo) or a file path. A path wins when such a file exists.
func Open(ref string) (*Recipe, error) { return open(ref, nil) }

// A Check is a rule owned by a package that imports this one (so this one
// cannot call it), such as the stacks' images (appliance/stack). It reports
// each problem through rep, by field path, like the rules here.
type Check func(r *Recipe, rep Reporter)

// Reporter takes a Check's problems.
type Reporter interface {
	// At records a problem at a field path (or its closest written parent).
	At(path, format string, args ...any)
	// Found is how many problems were recorded so far; a check that
	// repeats rules of the document can skip when it is not clean.
	Found() int
}

// Validate loads a recipe like Open and also checks what only the build or
// deploy would refuse later: the files the recipe names exist and can be
// read (files.go), and the given checks. Every problem is reported at once.
// Open does not look at the files: deploy runs where they need not exist.
func Validate(ref string, checks ...Check) (*Recipe, error) {
	return open(ref, &deepChecks{checks: checks})
}

// deepChecks are Validate's checks beyond the document.
type deepChecks struct{ checks []Check }

func open(ref string, deep *deepChecks) (*Recipe, error) {
	if ref == "" {
		ref = DefaultName
	}
	if _, err := os.Stat(ref); err == nil || strings.ContainsAny(ref, "/.") {
		data, err := os.ReadFile(ref)
		if err != nil {
			return nil, fmt.Errorf("read recipe: %w", err)
		}
		return parse(ref, data, filepath.Dir(ref), deep)
	}
	data, err := BuiltinSource(ref)
	if err != nil {
		return nil, err
	}
	return parse("builtin:"+ref, data, "", deep)
}

// Load reads, checks and completes a recipe file.
func Load(path string) (*Recipe, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read recipe: %w", err)
	}
	return Parse(path, data, filepath.Dir(path))
}

// Parse checks and completes a recipe read from file (used in messages);
// dir is where its relative paths start. Every problem is reported at once,
// as an *InvalidError.
func Parse(file string, data []byte, dir string) (*Recipe, error) {
	return parse(file, data, dir, nil)
}

func parse(file string, data []byte, dir string, deep *deepChecks) (*Recipe, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &InvalidError{Problems: []Problem{syntaxProblem(file, err)}}
	}
	if root.Kind == 0 || (root.Kind == yaml.DocumentNode && len(root.Content) == 0) {
		return nil, &InvalidError{Problems: []Problem{{File: file, Line: 1, Column: 1,
			Message: "the recipe is empty; start from `ssbuild recipe show demo`"}}}
	}
	if doc := root.Content[0]; doc.Kind != yaml.MappingNode {
		return nil, &InvalidError{Problems: []Problem{{File: file, Line: doc.Line, Column: doc.Column,
			Message: "a recipe is a mapping of keys (apiVersion, name, image, installer, cluster, deployments), not " + kindName(doc)}}}
	}
	rep := &report{file: file, pos: positions{}}
	r := &Recipe{File: file, dir: dir}
	d := &decoder{rep: rep}
	d.decode(&root, reflect.ValueOf(r).Elem(), "")
	if d.tooLarge {
		// Validating a half-decoded giant would only bury the one problem.
		return nil, &InvalidError{Problems: rep.list}
	}
	applyDefaults(r)
	validate(r, rep)
	if deep != nil {
		checkFiles(r, rep)
		for _, c := range deep.checks {
			c(r, rep)
		}
	}
	if len(rep.list) > 0 {
		e := &InvalidError{Problems: rep.list}
		e.sort()
		return nil, e
	}
	return r, nil
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxProblem turns yaml.v3's "yaml: line N: ..." into a Problem.
func syntaxProblem(file string, err error) Problem {
	msg := err.Error()
	p := Problem{File: file, Line: 1, Column: 1, Message: "not valid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Message = "not valid YAML: " + m[2]
	}
	return p
}

// Problems returns the problems of an error from Parse, Load or Open; nil
// when err is another kind of error.
func Problems(err error) []Problem {
	var inv *InvalidError
	if errors.As(err, &inv) {
		return inv.Problems
	}
	return nil
}

// Marshal writes the effective recipe as YAML.
func Marshal(r *Recipe) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}
