package ssimport

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/sovereign-stack/ssbuild/recipes"
	"gopkg.in/yaml.v3"
)

// Render writes r as recipe YAML with a header naming the sources in.
// It writes only the values that differ from what the recipe defaults
// would give (so `ssbuild recipe show` of the result is r again), falling
// back to the full effective recipe if the short form would not load back
// to the same recipe.
func Render(r *recipes.Recipe, in Input) ([]byte, error) {
	full, err := recipes.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	body := full
	if short, err := sparse(r, full); err == nil && sameRecipe(short, full) {
		body = short
	}
	out := append(header(in), body...)
	if !sameRecipe(out, full) {
		return nil, fmt.Errorf("render: the written recipe does not load back to the imported one")
	}
	return out, nil
}

func header(in Input) []byte {
	var b bytes.Buffer
	b.WriteString("# Imported by `ssbuild recipe import` from a Sovereign Stack configuration:\n")
	line := func(kind, path string) {
		if path != "" {
			fmt.Fprintf(&b, "#   %-13s %s\n", kind+":", commentSafe(path))
		}
	}
	line("remote.conf", in.Remote)
	line("project.conf", in.Project)
	for _, s := range in.Sites {
		line("site.conf", s)
	}
	b.WriteString("# Secrets were not imported: ssbuild generates its own. The image, installer\n" +
		"# and cluster sections are the shipped default recipe's: set your hosts and\n" +
		"# SSH keys under installer. `ssbuild recipe show FILE` lists every value.\n")
	return b.Bytes()
}

// commentSafe keeps a path on its comment line.
func commentSafe(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

// sameRecipe reports whether data loads to the recipe whose effective YAML
// is full.
func sameRecipe(data, full []byte) bool {
	back, err := recipes.Parse("rendered recipe", data, "")
	if err != nil {
		return false
	}
	m, err := recipes.Marshal(back)
	return err == nil && bytes.Equal(m, full)
}

// kept are fields written even when they equal their default: the ones a
// reader looks for, and the ones the defaults are computed from.
var kept = set("apiVersion", "name", "image.source.kind", "image.source.suite", "image.source.tarball",
	"image.source.sha256", "installer", "installer.hosts", "installer.hosts[].name", "installer.hosts[].address", "deployments",
	"deployments[].name", "deployments[].chain", "deployments[].primaryDomain", "deployments[].sites",
	"deployments[].sites[].domain")

// mustKeep reports whether p is a kept field or holds one.
func mustKeep(p string) bool {
	for k := range kept {
		if k == p || strings.HasPrefix(k, p+".") || strings.HasPrefix(k, p+"[]") {
			return true
		}
	}
	return false
}

// aligned are lists whose items the skeleton repeats one for one, so their
// items can be compared field by field.
var aligned = set("installer.hosts", "deployments", "deployments[].sites")

// sparse writes r without the values that its defaults would produce: the
// defaults come from loading a skeleton of r (the kept fields only).
func sparse(r *recipes.Recipe, full []byte) ([]byte, error) {
	def, err := recipes.Parse("skeleton", skeleton(r), "")
	if err != nil {
		return nil, err
	}
	defYAML, err := recipes.Marshal(def)
	if err != nil {
		return nil, err
	}
	var doc, defDoc yaml.Node
	if err := yaml.Unmarshal(full, &doc); err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(defYAML, &defDoc); err != nil {
		return nil, err
	}
	prune(doc.Content[0], defDoc.Content[0], "")
	flowLists(doc.Content[0])
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc.Content[0]); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// skeleton is r reduced to the kept fields.
func skeleton(r *recipes.Recipe) []byte {
	type m = map[string]any
	src := m{}
	for k, v := range map[string]string{"kind": r.Image.Source.Kind, "suite": r.Image.Source.Suite,
		"tarball": r.Image.Source.Tarball, "sha256": r.Image.Source.SHA256} {
		if v != "" {
			src[k] = v
		}
	}
	hosts := []m{}
	for _, h := range r.Installer.Hosts {
		host := m{"name": h.Name}
		if h.Address != "" { // a cluster's hosts need one to load at all
			host["address"] = h.Address
		}
		hosts = append(hosts, host)
	}
	deps := []m{}
	for _, d := range r.Deployments {
		sites := []m{}
		for _, s := range d.Sites {
			sites = append(sites, m{"domain": s.Domain})
		}
		deps = append(deps, m{"name": d.Name, "chain": d.Chain, "primaryDomain": d.PrimaryDomain, "sites": sites})
	}
	b, _ := yaml.Marshal(m{"apiVersion": r.APIVersion, "name": r.Name, "image": m{"source": src},
		"installer": m{"hosts": hosts}, "deployments": deps})
	return b
}

// prune drops from mapping n the keys whose values equal those in def.
func prune(n, def *yaml.Node, path string) {
	if n.Kind != yaml.MappingNode || def.Kind != yaml.MappingNode {
		return
	}
	var out []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := k.Value
		if path != "" {
			p = path + "." + k.Value
		}
		d := lookup(def, k.Value)
		if d != nil && !mustKeep(p) && equalNodes(v, d) {
			continue
		}
		if d != nil {
			switch {
			case v.Kind == yaml.MappingNode:
				prune(v, d, p)
			case v.Kind == yaml.SequenceNode && aligned[p] && d.Kind == yaml.SequenceNode && len(v.Content) == len(d.Content):
				for j := range v.Content {
					prune(v.Content[j], d.Content[j], p+"[]")
				}
			}
		}
		if v.Kind == yaml.MappingNode && len(v.Content) == 0 && !mustKeep(p) {
			continue // everything in it was a default
		}
		out = append(out, k, v)
	}
	n.Content = out
}

func lookup(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func equalNodes(a, b *yaml.Node) bool {
	if a.Kind != b.Kind || a.Value != b.Value || len(a.Content) != len(b.Content) {
		return false
	}
	for i := range a.Content {
		if !equalNodes(a.Content[i], b.Content[i]) {
			return false
		}
	}
	return true
}

// flowLists writes short lists of plain values on one line: [en, es].
func flowLists(n *yaml.Node) {
	if n.Kind == yaml.SequenceNode {
		flow := true
		for _, c := range n.Content {
			flow = flow && c.Kind == yaml.ScalarNode && len(c.Value) < 40
		}
		if flow {
			n.Style = yaml.FlowStyle
		}
	}
	for _, c := range n.Content {
		flowLists(c)
	}
}
