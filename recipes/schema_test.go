package recipes

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// compileSchema compiles the generated schema with an independent JSON
// Schema implementation, so a schema editors would reject fails here.
func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	raw, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("recipe.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("recipe.json")
	if err != nil {
		t.Fatalf("schema does not compile: %v", err)
	}
	return s
}

// asJSONValue reads YAML text into the generic values a JSON validator takes.
func asJSONValue(t *testing.T, text []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(text, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSchemaAcceptsShippedRecipes(t *testing.T) {
	s := compileSchema(t)
	for _, name := range Builtins() {
		src, _ := BuiltinSource(name)
		if err := s.Validate(asJSONValue(t, src)); err != nil {
			t.Errorf("schema rejects shipped recipe %s: %v", name, err)
		}
		// The effective recipe, with every default, must pass too.
		r, err := Open(name)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := Marshal(r)
		if err := s.Validate(asJSONValue(t, out)); err != nil {
			t.Errorf("schema rejects effective recipe %s: %v", name, err)
		}
	}
}

func TestSchemaRejectsWhatTheLoaderRejects(t *testing.T) {
	s := compileSchema(t)
	for name, doc := range map[string]string{
		"unknown key":  base + "imge: {}\n",
		"enum":         base + "cluster: {storage: {driver: lvm}}\n",
		"missing name": "apiVersion: ssbuild/v1\ninstaller: {hosts: [{name: h1}]}\n",
		"wrong type":   base + "image: {packages: docker.io}\n",
		"bad size":     base + "deployments: [{name: p, primaryDomain: example.com, instances: {www: {memory: lots}}}]\n",
	} {
		if err := s.Validate(asJSONValue(t, []byte(doc))); err == nil {
			t.Errorf("%s: schema accepts what the loader refuses", name)
		}
		if _, err := Parse("t.yaml", []byte(doc), ""); err == nil {
			t.Errorf("%s: loader accepts it", name)
		}
	}
}

func TestReferenceListsEveryField(t *testing.T) {
	ref := Reference()
	for _, field := range []string{"`image.source.suite`", "`installer.hosts[].mac`", "`deployments[].sites[].nostrOwnerPubkey`",
		"`deployments[].instances.btcpay.disks.docker`", "`cluster.secret.file`"} {
		if !strings.Contains(ref, field) {
			t.Errorf("reference lacks %s", field)
		}
	}
}
