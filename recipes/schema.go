package recipes

import (
	"encoding/json"
	"reflect"
	"strings"
)

// Schema returns a JSON Schema (draft 2020-12) of the recipe, generated from
// the Go types and their tags, for editors (yaml-language-server).
func Schema() ([]byte, error) {
	s := schemaOf(reflect.TypeOf(Recipe{}))
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["$id"] = "https://sovereign-stack.org/ssbuild/recipe-v1.schema.json"
	s["title"] = "ssbuild recipe (" + APIVersion + ")"
	return json.MarshalIndent(s, "", "  ")
}

var (
	sizeType = reflect.TypeOf(Size(0))
	macType  = reflect.TypeOf(MAC(""))
)

func schemaOf(t reflect.Type) map[string]any {
	switch t {
	case sizeType:
		return map[string]any{"type": "string", "pattern": `^[0-9]+(\.[0-9]+)?\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)$`}
	case macType:
		return map[string]any{"type": "string", "pattern": `^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$`}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem())
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64:
		return map[string]any{"type": "integer"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for _, f := range structFields(t).list {
			fs := schemaOf(t.Field(f.index).Type)
			if f.doc != "" {
				fs["description"] = f.doc
			}
			if len(f.enum) > 0 {
				target := fs
				if fs["type"] == "array" {
					target = fs["items"].(map[string]any)
				}
				target["enum"] = f.enum
			}
			if f.required {
				required = append(required, f.name)
			}
			props[f.name] = fs
		}
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			s["required"] = required
		}
		return s
	}
	panic("recipes: no schema for " + t.String())
}

// Reference writes a Markdown table of every recipe field, its type and
// description, in document order; the README's recipe reference is made
// with it (go generate keeps the two equal, see reference_test.go).
func Reference() string {
	var b strings.Builder
	b.WriteString("| field | type | description |\n|---|---|---|\n")
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for _, f := range structFields(t).list {
			ft := t.Field(f.index).Type
			path := joinPath(prefix, f.name)
			kind := typeName(ft)
			if f.required {
				kind += ", required"
			}
			doc := f.doc
			if len(f.enum) > 0 {
				doc += " (one of: " + strings.Join(f.enum, ", ") + ")"
			}
			b.WriteString("| `" + path + "` | " + kind + " | " + strings.ReplaceAll(doc, "|", "\\|") + " |\n")
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				if ft.Kind() == reflect.Slice {
					path += "[]"
				}
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(ft, path)
			}
		}
	}
	walk(reflect.TypeOf(Recipe{}), "")
	return b.String()
}

func typeName(t reflect.Type) string {
	switch t {
	case sizeType:
		return "size"
	case macType:
		return "MAC"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return typeName(t.Elem())
	case reflect.Slice:
		return "list of " + typeName(t.Elem())
	case reflect.Struct:
		return "mapping"
	case reflect.Int, reflect.Int64:
		return "integer"
	case reflect.Bool:
		return "boolean"
	}
	return "string"
}
