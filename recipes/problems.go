package recipes

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong with a recipe, at a place in its file.
type Problem struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Path    string `json:"path"`    // field path, e.g. deployments[0].sites[1].domain
	Message string `json:"message"` // what is wrong, and what is allowed
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
	}
	if p.Path == "" {
		return fmt.Sprintf("%s: %s", loc, p.Message)
	}
	return fmt.Sprintf("%s: %s: %s", loc, p.Path, p.Message)
}

// InvalidError lists every problem found in a recipe, in file order.
type InvalidError struct {
	Problems []Problem
}

func (e *InvalidError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (e *InvalidError) sort() {
	sort.SliceStable(e.Problems, func(i, j int) bool {
		a, b := e.Problems[i], e.Problems[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// pos is a place in the recipe file.
type pos struct{ line, col int }

// positions maps field paths to where their values are written, so checks
// that run after decoding can still point at the right line.
type positions map[string]pos

// report collects problems against positions.
type report struct {
	file string
	pos  positions
	list []Problem
}

// at records a problem for path. When path is not written in the file (a
// missing field, a default), it points at the closest written parent.
func (r *report) at(path, format string, args ...any) {
	p, found := r.pos[path]
	for q := path; !found && q != ""; {
		q = parentPath(q)
		p, found = r.pos[q]
	}
	r.list = append(r.list, Problem{File: r.file, Line: p.line, Column: p.col, Path: path,
		Message: fmt.Sprintf(format, args...)})
}

// At and Found make a report a Reporter.
func (r *report) At(path, format string, args ...any) { r.at(path, format, args...) }
func (r *report) Found() int                          { return len(r.list) }

// written reports whether path appears in the file.
func (r *report) written(path string) bool { _, ok := r.pos[path]; return ok }

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func joinPath(parent, field string) string {
	if parent == "" {
		return field
	}
	return parent + "." + field
}

func indexPath(parent string, i int) string { return fmt.Sprintf("%s[%d]", parent, i) }
