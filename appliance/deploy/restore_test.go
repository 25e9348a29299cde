package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
)

// checkRestore is issue 16's restore into the same deployment (a subtest
// of TestDeployDemoOnThreeHosts): rows and files changed after a backup
// come back as they were, the site answers from the restored database,
// the live channel database (never in a backup) is left as it is, and a
// damaged backup, or a whole one another key signed (anyone can encrypt
// to the owner's public key), is refused before anything changes.
func checkRestore(t *testing.T, ctx context.Context, o deploy.Options, project string, www endpoint) {
	ids := ownerKey(t, o)
	ctr := project + "-btcpay"
	psql := func(sql string) string { return psqlIn(t, o, project, sql) }
	psql("INSERT INTO pages (body) VALUES ('row to restore') ON CONFLICT DO NOTHING")
	dockerExec(t, o, project, "btcpay", ctr, "sh", "-c", "echo before > /data/restore-marker")
	dir := filepath.Join(t.TempDir(), "backup")
	m, err := backup.Run(ctx, backup.Options{FilesCache: t.TempDir(), LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name, To: dir, State: stateOf(o)})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}

	// After the backup: the rows go, a file changes, the node moves on.
	psql("DELETE FROM pages")
	dockerExec(t, o, project, "btcpay", ctr, "sh", "-c", "echo after > /data/restore-marker")
	dockerExec(t, o, project, "btcpay", project+"-lightning", "sh", "-c", "echo live-after-backup > /root/.lightning/regtest/lightningd.sqlite3")

	// A damaged copy is refused and changes nothing.
	damaged := filepath.Join(t.TempDir(), "damaged")
	if err := os.CopyFS(damaged, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	for _, it := range m.Items {
		if it.File == "btcpay/btcpay-db/btcpay-db.sql.age" {
			dump := filepath.Join(damaged, "chunks", it.Chunks[0].ID[:2], it.Chunks[0].ID+".age")
			b, _ := os.ReadFile(dump)
			b[len(b)-5] ^= 0x01
			os.WriteFile(dump, b, 0o600)
		}
	}
	err = backup.Restore(ctx, backup.RestoreOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name, From: damaged, Identities: ids, State: stateOf(o)})
	if err == nil || !strings.Contains(err.Error(), "nothing changed") || !strings.Contains(err.Error(), "btcpay-db.sql.age") {
		t.Fatalf("restore from a damaged backup: %v; want a refusal naming the file", err)
	}
	// A forged backup: whole, encrypted to the owner's public key, its
	// dump empty, signed by a key that is not the cluster's.
	forged := filepath.Join(t.TempDir(), "forged")
	fk, _ := backup.DeriveKeys(strings.Repeat("not this cluster's backup key ", 2))
	fm := m
	fm.Items, fm.Created = nil, m.Created.Add(time.Minute)
	fw, err := backup.NewWriter(forged, fm, fk, []age.Recipient{ids[0].(*age.X25519Identity).Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range m.Items {
		if err := fw.AddReader(it, strings.NewReader("")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	err = backup.Restore(ctx, backup.RestoreOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name, From: forged, Identities: ids, State: stateOf(o)})
	if err == nil || !strings.Contains(err.Error(), "nothing changed") || !strings.Contains(err.Error(), "signature does not match") {
		t.Fatalf("restore from a backup another key signed: %v; want a refusal", err)
	}
	if got := dockerExec(t, o, project, "btcpay", ctr, "cat", "/data/restore-marker"); got != "after" {
		t.Fatalf("a refused restore changed /data/restore-marker to %q", got)
	}

	start := time.Now()
	if err := backup.Restore(ctx, backup.RestoreOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name,
		From: dir, Identities: ids, State: stateOf(o), Progress: o.Progress}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Logf("restore: %s", time.Since(start).Round(time.Millisecond))
	if got := psql("SELECT body FROM pages ORDER BY id"); !strings.Contains(got, "btcpay demo.example") || !strings.Contains(got, "row to restore") {
		t.Errorf("rows after restore: %q; want the stand-in's and the test's", got)
	}
	if got := dockerExec(t, o, project, "btcpay", ctr, "cat", "/data/restore-marker"); got != "before" {
		t.Errorf("/data/restore-marker after restore: %q, want %q", got, "before")
	}
	// (the stand-in appends a line at each start: the restore restarted it)
	if got := dockerExec(t, o, project, "btcpay", project+"-lightning", "cat", "/root/.lightning/regtest/lightningd.sqlite3"); !strings.HasPrefix(got, "live-after-backup\n") {
		t.Errorf("the live channel database after restore: %q; a restore must never put a periodic copy back", got)
	}
	// The site answers from the restored database (the stand-in re-reads it every 5 s).
	var page string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if page = httpGet(t, ctx, www, "btcpay.demo.example"); page == "btcpay demo.example" {
			break
		}
	}
	if page != "btcpay demo.example" {
		t.Errorf("btcpay.demo.example after restore answered %q", page)
	}
}
