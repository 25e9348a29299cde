package recipes

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the work of decoding one document, so a recipe built from
// nested aliases (a "billion laughs") is refused instead of eating memory.
const maxNodes = 100_000

var textUnmarshaler = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

// decoder walks a yaml.Node tree into the recipe types. Unlike yaml.v3's own
// decoding it goes on after a problem, so every problem is reported at once
// with its line and column, and it records where each value was written.
type decoder struct {
	rep      *report
	nodes    int
	tooLarge bool
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.nodes++; d.nodes > maxNodes {
		if !d.tooLarge {
			d.tooLarge = true
			d.rep.list = []Problem{{File: d.rep.file, Line: n.Line, Column: n.Column, Path: path,
				Message: fmt.Sprintf("document is too large (more than %d values, or aliases that expand too far)", maxNodes)}}
		}
		return
	}
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode {
		d.decode(n.Alias, v, path)
		return
	}
	d.rep.pos[path] = pos{n.Line, n.Column}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // absent: the default applies
	}

	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
		return
	}
	if reflect.PointerTo(v.Type()).Implements(textUnmarshaler) {
		if !d.want(n, path, yaml.ScalarNode, "a single value") {
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.problem(n, path, "%v", err)
		}
		return
	}

	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if !d.want(n, path, yaml.SequenceNode, "a list") {
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			if isNull(item) && s.Index(i).Kind() == reflect.Struct {
				d.problem(item, indexPath(path, i), "is an empty entry; write its fields")
				continue
			}
			d.decode(item, s.Index(i), indexPath(path, i))
		}
		v.Set(s)
	case reflect.String:
		if d.want(n, path, yaml.ScalarNode, "a string") {
			v.SetString(n.Value)
		}
	case reflect.Bool:
		if !d.want(n, path, yaml.ScalarNode, "true or false") {
			return
		}
		switch n.Value {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.problem(n, path, "%q is not true or false", n.Value)
		}
	case reflect.Int, reflect.Int64:
		if !d.want(n, path, yaml.ScalarNode, "a whole number") {
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if err != nil || n.Tag != "!!int" {
			d.problem(n, path, "%q is not a whole number", n.Value)
			return
		}
		v.SetInt(i)
	default:
		panic(fmt.Sprintf("recipes: no decoder for %s at %s", v.Type(), path))
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if !d.want(n, path, yaml.MappingNode, "a mapping of keys to values") {
		return
	}
	fields := structFields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		fpath := joinPath(path, key)
		f, ok := fields.byName[key]
		switch {
		case k.Kind != yaml.ScalarNode:
			d.problem(k, path, "keys must be plain names")
			continue
		case !ok:
			d.problem(k, fpath, "unknown field (allowed here: %s)", strings.Join(fields.names, ", "))
			continue
		case seen[key]:
			d.problem(k, fpath, "written twice; keep one")
			continue
		}
		seen[key] = true
		if f.required && isNull(val) {
			d.problem(val, fpath, "is empty; this field is required")
			continue
		}
		before := len(d.rep.list)
		d.decode(val, v.Field(f.index), fpath)
		if len(d.rep.list) == before { // rules apply only to values that decoded
			d.checkEnum(val, v.Field(f.index), fpath, f.enum)
			d.checkRange(v.Field(f.index), fpath, f)
		}
	}
	for _, f := range fields.list {
		if f.required && !seen[f.name] {
			d.problem(n, joinPath(path, f.name), "missing; this field is required")
		}
	}
}

// checkEnum applies a field's enum rule to a string or a list of strings.
func (d *decoder) checkEnum(n *yaml.Node, v reflect.Value, path string, enum []string) {
	if len(enum) == 0 {
		return
	}
	check := func(s string, p string) {
		for _, e := range enum {
			if s == e {
				return
			}
		}
		d.rep.at(p, "%q is not allowed (allowed: %s)", s, strings.Join(enum, ", "))
	}
	switch v.Kind() {
	case reflect.String:
		if s := v.String(); s != "" {
			check(s, path)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if s := v.Index(i).String(); s != "" { // "" is a type error, reported already
				check(s, indexPath(path, i))
			}
		}
	}
}

// checkRange applies a field's min/max rule to what the recipe wrote, before
// defaults: an explicit 0 must not silently become the default.
func (d *decoder) checkRange(v reflect.Value, path string, f fieldInfo) {
	if f.min == "" && f.max == "" {
		return
	}
	var val, lo, hi float64
	parse := func(s string) float64 {
		n, _ := strconv.ParseFloat(s, 64)
		return n
	}
	shown := fmt.Sprint(v.Interface())
	if v.Type() == sizeType {
		val = float64(v.Uint())
		parse = func(s string) float64 { z, _ := ParseSize(s); return float64(z) }
	} else {
		val = float64(v.Int())
	}
	lo, hi = parse(f.min), parse(f.max)
	switch {
	case f.min != "" && f.max != "" && (val < lo || val > hi):
		d.rep.at(path, "%s is out of range (%s to %s)", shown, f.min, f.max)
	case f.min != "" && val < lo:
		d.rep.at(path, "%s is too small (at least %s)", shown, f.min)
	case f.max != "" && val > hi:
		d.rep.at(path, "%s is too large (at most %s)", shown, f.max)
	}
}

func (d *decoder) want(n *yaml.Node, path string, kind yaml.Kind, what string) bool {
	if n.Kind == kind {
		return true
	}
	d.problem(n, path, "must be %s, not %s", what, kindName(n))
	return false
}

func isNull(n *yaml.Node) bool {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// kindName says what a node is, for messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return "an alias"
}

func (d *decoder) problem(n *yaml.Node, path, format string, args ...any) {
	d.rep.list = append(d.rep.list, Problem{File: d.rep.file, Line: n.Line, Column: n.Column,
		Path: path, Message: fmt.Sprintf(format, args...)})
}

// fieldInfo is what the decoder and the schema need to know of a field.
type fieldInfo struct {
	name     string
	index    int
	required bool
	enum     []string
	min, max string // inclusive bounds, in the field's own notation
	doc      string
}

type fieldSet struct {
	list   []fieldInfo
	byName map[string]fieldInfo
	names  []string
}

// structFields reads the yaml, rule and doc tags of a recipe struct.
func structFields(t reflect.Type) fieldSet {
	fs := fieldSet{byName: map[string]fieldInfo{}}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		f := fieldInfo{name: name, index: i, doc: sf.Tag.Get("doc")}
		for _, r := range strings.Split(sf.Tag.Get("rule"), ",") {
			switch {
			case r == "required":
				f.required = true
			case strings.HasPrefix(r, "enum="):
				f.enum = strings.Split(strings.TrimPrefix(r, "enum="), "|")
			case strings.HasPrefix(r, "min="):
				f.min = strings.TrimPrefix(r, "min=")
			case strings.HasPrefix(r, "max="):
				f.max = strings.TrimPrefix(r, "max=")
			}
		}
		fs.list = append(fs.list, f)
		fs.byName[name] = f
		fs.names = append(fs.names, name)
	}
	return fs
}
