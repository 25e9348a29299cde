package deploy_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
)

// checkBackup is issue 16's backup check on the deployed demo (a subtest
// of TestDeployDemoOnThreeHosts, on its cluster): a row written through
// the btcpay stand-in's real PostgreSQL is in the backup's dump, decrypted
// with the owner's identity; the folder holds no key and no plain data;
// the live channel database (declared never-restore) is in no file; a
// second backup into the same folder after a row is added writes only the
// chunks that changed and reads no volume file (the files cache), and each backup verifies and decrypts alone; one
// flipped byte fails verify naming the chunk and its item.
func checkBackup(t *testing.T, ctx context.Context, o deploy.Options, project string) {
	ids := ownerKey(t, o)
	ctr := project + "-btcpay"
	// The stand-in wrote its row once its database was up.
	var page string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		out, _, code, err := lxdexec.Run(o.LXD.UseProject(project), "btcpay", "docker", "exec", ctr, "psql", "-tA", "-c", "SELECT body FROM pages ORDER BY id")
		if err == nil && code == 0 {
			page = strings.TrimSpace(out)
			break
		}
	}
	if page != "btcpay demo.example" {
		t.Fatalf("the btcpay stand-in's table holds %q, want its row %q", page, "btcpay demo.example")
	}
	psqlIn(t, o, project, "INSERT INTO pages (body) VALUES ('written before the backup') ON CONFLICT DO NOTHING")
	const live = "live-channel-state-7f3a"
	dockerExec(t, o, project, "btcpay", project+"-lightning", "sh", "-c", "echo "+live+" > /root/.lightning/regtest/lightningd.sqlite3")

	// Volume files: 2 MiB in btcpay's volume, a small file in a www site's.
	dockerExec(t, o, project, "btcpay", ctr, "/bin/busybox", "dd", "if=/dev/urandom", "of=/data/big.bin", "bs=64k", "count=32")
	site := project + "-ghost-blog-example"
	dockerExec(t, o, project, "www", site, "sh", "-c", "echo one > /data/small.txt")

	dir, cache := filepath.Join(t.TempDir(), "backup"), t.TempDir()
	start := time.Now()
	m, err := backup.Run(ctx, backup.Options{LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name, To: dir, State: stateOf(o), Progress: o.Progress, FilesCache: cache})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	t.Logf("backup of %s: %d items in %s, %+v", project, len(m.Items), time.Since(start).Round(time.Millisecond), m.Stats)
	if _, err := backup.Verify(dir, ids); err != nil {
		t.Fatalf("verify: %v", err)
	}

	const dump = "btcpay/btcpay-db/btcpay-db.sql.age"
	var sql bytes.Buffer
	if err := backup.Decrypt(dir, dump, ids, &sql); err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{"btcpay demo.example", "written before the backup"} {
		if !strings.Contains(sql.String(), row) {
			t.Errorf("the postgres dump lacks the row %q", row)
		}
	}
	files := map[string]bool{}
	for _, it := range m.Items {
		files[it.File] = true
		var plain bytes.Buffer
		if err := backup.Decrypt(dir, it.File, ids, &plain); err != nil {
			t.Errorf("%s: %v", it.File, err)
		}
		if strings.Contains(plain.String(), live) {
			t.Errorf("%s holds the live channel database", it.File)
		}
		if it.File == "btcpay/lightning/lightning-data_regtest_hsm_secret.tar.age" && !strings.Contains(plain.String(), "stand-in hsm_secret") {
			t.Errorf("%s lacks the node's hsm_secret", it.File)
		}
	}
	for _, f := range []string{dump, "btcpay/btcpay/btcpay-data.tar.age", "btcpay/lightning/lightning-data_regtest_hsm_secret.tar.age",
		"btcpay/lightning/lightning-data_regtest_emergency.recover.tar.age", "www/ghost-blog-example/ghost-blog-example-data.tar.age"} {
		if !files[f] {
			t.Errorf("the backup lacks %s (has %v)", f, m.Items)
		}
	}
	if len(m.Lightning) != 1 || m.Lightning[0].Instance != "btcpay" || m.Lightning[0].Service != "lightning" || m.Lightning[0].Generation < 1 {
		t.Errorf("the manifest's Lightning nodes: %+v; want btcpay's lightning with its generation", m.Lightning)
	}
	if len(m.NeverRestored) != 1 || m.NeverRestored[0].Path != "/regtest/lightningd.sqlite3" {
		t.Errorf("never restored: %+v; want the live channel database", m.NeverRestored)
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("AGE-SECRET-KEY")) || bytes.Contains(b, []byte("written before the backup")) || bytes.Contains(b, []byte(live)) {
			t.Errorf("%s holds a private key or plain data", p)
		}
		return nil
	})

	// A row more, then a second backup into the same folder.
	psqlIn(t, o, project, "INSERT INTO pages (body) VALUES ('written between the backups') ON CONFLICT DO NOTHING")
	start = time.Now()
	m2, err := backup.Run(ctx, backup.Options{LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name, To: dir, State: stateOf(o), FilesCache: cache})
	if err != nil {
		t.Fatalf("second backup into %s: %v", dir, err)
	}
	t.Logf("second backup: %s, %+v", time.Since(start).Round(time.Millisecond), m2.Stats)
	if m2.Name == m.Name || m2.Signer != m.Signer || m2.Stats.New == 0 || m2.Stats.Reused == 0 || m2.Stats.New > len(m2.Items)/2 {
		t.Errorf("second backup %s (first %s): %+v; want a few new chunks, the rest reused, the same signer", m2.Name, m.Name, m2.Stats)
	}
	// No volume file changed: the volume paths are listed in the instances
	// and named again from the files cache, not a byte of them read.
	if m.Stats.VolumeBytes < 2<<20 || m.Stats.VolumeBytesRead != m.Stats.VolumeBytes || m2.Stats.VolumeFiles != m.Stats.VolumeFiles || m2.Stats.VolumeBytesRead != 0 {
		t.Errorf("volume files: first backup %d (%d of %d bytes read), second %d (%d bytes read); want all of 2 MiB or more, then none",
			m.Stats.VolumeFiles, m.Stats.VolumeBytesRead, m.Stats.VolumeBytes, m2.Stats.VolumeFiles, m2.Stats.VolumeBytesRead)
	}
	// One small file changed in the site's volume: a third backup reads
	// it (its group), not btcpay's 2 MiB, and the file is in it as changed.
	dockerExec(t, o, project, "www", site, "sh", "-c", "echo two >> /data/small.txt")
	m3, err := backup.Run(ctx, backup.Options{LXD: o.LXD, Recipe: o.Recipe, Deployment: o.Recipe.Deployments[0].Name, To: dir, State: stateOf(o), FilesCache: cache})
	if err != nil {
		t.Fatalf("third backup into %s: %v", dir, err)
	}
	if m3.Stats.VolumeFilesRead == 0 || m3.Stats.VolumeBytesRead == 0 || m3.Stats.VolumeBytesRead >= 1<<20 {
		t.Errorf("after one small file changed: %d files, %d bytes read; want that file's group alone", m3.Stats.VolumeFilesRead, m3.Stats.VolumeBytesRead)
	}
	// dir's latest backup is the third.
	var ghost bytes.Buffer
	if err := backup.Decrypt(dir, "www/ghost-blog-example/ghost-blog-example-data.tar.age", ids, &ghost); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ghost.String(), "one\ntwo\n") {
		t.Errorf("the third backup's copy of the site's volume lacks the changed small.txt")
	}
	for _, b := range []struct {
		m   backup.Manifest
		has bool
	}{{m, false}, {m2, true}} {
		one := filepath.Join(dir, "backups", b.m.Name)
		if _, err := backup.VerifyWith(one, backup.VerifyOptions{Identities: ids, Signer: m.Signer}); err != nil {
			t.Errorf("verify %s alone: %v", b.m.Name, err)
		}
		var sql bytes.Buffer
		if err := backup.Decrypt(one, dump, ids, &sql); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(sql.String(), "written between the backups") != b.has {
			t.Errorf("backup %s: the row written between the backups in its dump: %v, want %v", b.m.Name, !b.has, b.has)
		}
	}
	var chunk string
	for _, it := range m2.Items {
		if it.File == dump {
			chunk = filepath.Join("chunks", it.Chunks[0].ID[:2], it.Chunks[0].ID+".age")
		}
	}
	p := filepath.Join(dir, chunk)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Verify(dir, ids); err == nil || !strings.Contains(err.Error(), chunk+" ("+dump+" in backups/"+m2.Name+"): sha256") {
		t.Errorf("verify after a flipped byte in %s: %v; want the chunk and its item named", chunk, err)
	}
	if _, err := backup.Verify(filepath.Join(dir, "backups", m.Name), ids); err != nil {
		t.Errorf("the first backup, which does not use the damaged chunk: %v", err)
	}
}

// stateOf is where the deployment's secrets are, as deploy finds them.
// stateOf is the deploy's state store of o (the bed deploys with a
// state folder).
func stateOf(o deploy.Options) deploystate.Store {
	if o.State != nil {
		return o.State
	}
	return deploystate.Folder{Dir: secrets.Dir(o.StateDir)}
}

// psqlIn runs psql with sql in the btcpay stand-in's container (its
// environment names the database and its password) and returns the
// output; a failure shows psql's own message. lxdexec retries an exec LXD
// reported as not started, which under load may have run after all: the
// statements given here must be safe to run twice.
func psqlIn(t *testing.T, o deploy.Options, project, sql string) string {
	t.Helper()
	out, errOut, code, err := lxdexec.Run(o.LXD.UseProject(project), "btcpay", "docker", "exec", project+"-btcpay",
		"psql", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql)
	if err != nil || code != 0 {
		t.Fatalf("psql %q in btcpay: code %d, %v: %s", sql, code, err, errOut)
	}
	return strings.TrimSpace(out)
}

// ownerKey makes the owner's age key for a backup subtest and puts its
// public key in the recipe's backup.recipients until the subtest ends.
func ownerKey(t *testing.T, o deploy.Options) []age.Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	o.Recipe.Backup.Recipients = []string{id.Recipient().String()}
	t.Cleanup(func() { o.Recipe.Backup.Recipients = nil })
	return []age.Identity{id}
}
