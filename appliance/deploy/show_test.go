package deploy

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
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

// show says the last restore test: the backup and its age, when it ran,
// how long it took, and how it ended; or that none ran.
func TestRestoreTestLine(t *testing.T) {
	now := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	ok := &registry.RestoreTest{Deployment: "demo-regtest", Backup: "backups/2026-12-03T120000Z",
		Taken: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC), Started: now.Add(-20*time.Minute - 41*time.Second), Ended: now.Add(-20 * time.Minute)}
	failed := *ok
	failed.Ended, failed.Error = ok.Started.Add(3*time.Minute+5*time.Second), "restore: btcpay/btcpay-db/btcpay-db.sql.age: psql exited 3:\nERROR"
	old := *ok
	old.Taken = now.Add(-9 * 24 * time.Hour)
	for _, c := range []struct {
		rt   *registry.RestoreTest
		want string
	}{
		{nil, "restore test: never"},
		{ok, "restore test: backups/2026-12-03T120000Z (taken 3 h ago) restored OK 20 min ago in 41 s"},
		{&failed, "restore test: backups/2026-12-03T120000Z (taken 3 h ago) FAILED 17 min ago after 3 min 5 s: restore: btcpay/btcpay-db/btcpay-db.sql.age: psql exited 3: ERROR"},
		{&old, "restore test: backups/2026-12-03T120000Z (taken 9 days ago) restored OK 20 min ago in 41 s"},
	} {
		if got := RestoreTestLine(c.rt, now); got != c.want {
			t.Errorf("RestoreTestLine = %q\nwant              %q", got, c.want)
		}
	}
	for d, want := range map[time.Duration]string{30 * time.Second: "just now", 59 * time.Minute: "59 min ago", 47 * time.Hour: "47 h ago", -time.Minute: "in the future (clocks differ)"} {
		if got := Ago(d); got != want {
			t.Errorf("Ago(%v) = %q, want %q", d, got, want)
		}
	}
	st := State{Deployments: []DeploymentState{{Name: "demo", Project: "demo-regtest", RestoreTest: ok}}}
	var b bytes.Buffer
	if err := st.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "restore test: backups/2026-12-03T120000Z (taken ") {
		t.Errorf("show:\n%s\nlacks the restore test", b.String())
	}
}
