package recipes

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// FuzzLoad feeds arbitrary documents to the loader: it must never panic, and
// it returns either a recipe that survives a round trip or problems that all
// carry a file and a message.
func FuzzLoad(f *testing.F) {
	for _, name := range Builtins() {
		src, _ := BuiltinSource(name)
		f.Add(src)
	}
	f.Add([]byte(base))
	f.Add([]byte(base + "deployments:\n  - {name: p, primaryDomain: example.com, sites: [{domain: example.com, services: [nostr-relay], nostrOwnerPubkey: npub1x}]}\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("apiVersion: ssbuild/v1\nname: t\ninstaller: {hosts: [{name: h, mac: 00:00:00:00:00:00}], layout: {esp: 1.5GiB}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan struct{})
		go func() {
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				panic(fmt.Sprintf("slow input %q", data))
			}
		}()
		defer close(done)
		r, err := Parse("f.yaml", data, "")
		if err != nil {
			ps := Problems(err)
			if len(ps) == 0 {
				t.Fatalf("error without problems: %v", err)
			}
			for _, p := range ps {
				if p.File != "f.yaml" || p.Message == "" || strings.HasPrefix(p.String(), ":") {
					t.Fatalf("malformed problem %+v", p)
				}
			}
			return
		}
		// A valid recipe written out must load again to the same recipe.
		out, err := Marshal(r)
		if err != nil {
			t.Fatalf("marshal valid recipe: %v", err)
		}
		r2, err := Parse("again.yaml", out, "")
		if err != nil {
			t.Fatalf("effective recipe does not load again: %v\n%s", err, out)
		}
		out2, _ := Marshal(r2)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the recipe:\n%s\n---\n%s", out, out2)
		}
	})
}
