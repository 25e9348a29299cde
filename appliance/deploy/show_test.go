package deploy

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// show prints the current revision, and with --history every one with its
// outcome.
func TestShowRevisions(t *testing.T) {
	at := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	one := RevisionState{Revision: 1, RecipeDigest: "sha256:0123456789abcdef0123", State: "deployed", Member: "host1",
		Started: at, Ended: at.Add(time.Minute), Mutations: 14}
	two := RevisionState{Revision: 2, RecipeDigest: "sha256:fedcba9876543210fedc", State: "failed", Member: "host2",
		Started: at.Add(time.Hour), Ended: at.Add(time.Hour + time.Minute), Mutations: 2, Error: "demo-regtest/www: services: boom"}
	st := State{Deployments: []DeploymentState{{Name: "demo", Project: "demo-regtest", Revision: &two}}}
	var b bytes.Buffer
	if err := st.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := "revision 2: failed on host2, started 2026-12-03 10:00:00Z, ended 2026-12-03 10:01:00Z, 2 changes (recipe sha256:fedcba987654): demo-regtest/www: services: boom"
	if !strings.Contains(b.String(), want) {
		t.Errorf("show:\n%s\nwant the line %q", b.String(), want)
	}
	st.Deployments[0].History = []RevisionState{one, two}
	b.Reset()
	if err := st.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"REVISION  STATE     MEMBER", "1         deployed  host1", "2         failed    host2", "sha256:0123456789ab", "boom"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("show --history:\n%s\nlacks %q", b.String(), want)
		}
	}
}
