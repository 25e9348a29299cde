package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
)

// backupFolder writes two backups of a dump into a folder, through the
// backup package as ssbuild backup does, and returns the folder, the
// identity file that decrypts them, the signer key and the backups' names.
func backupFolder(t *testing.T) (dir, identity, signer string, names []string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := backup.DeriveKeys(strings.Repeat("a test deployment's backup secret ", 2))
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(t.TempDir(), "backups")
	for i, dump := range []string{"CREATE TABLE t (x int);\n", "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1);\n"} {
		m := backup.Manifest{Deployment: "demo", Project: "demo-regtest", Created: time.Date(2026, 12, 3, 8+i, 0, 0, 0, time.UTC),
			Recipients: []string{id.Recipient().String()}}
		w, err := backup.NewWriter(dir, m, keys, []age.Recipient{id.Recipient()})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.AddReader(backup.Item{File: "btcpay/db/db.sql.age", Kind: "dump", Instance: "btcpay", Service: "db"}, strings.NewReader(dump)); err != nil {
			t.Fatal(err)
		}
		if m, err = w.Close(); err != nil {
			t.Fatal(err)
		}
		names = append(names, m.Name)
	}
	identity = writeFile(t, "key.txt", id.String()+"\n")
	return dir, identity, keys.Signer(), names
}

// ssbuild backup verify: exit 0 on a whole folder (with and without the
// identity), 1 naming the file after a flipped byte; a missing folder or
// argument is a usage error; the key never appears in the output.
func TestBackupVerifyCommand(t *testing.T) {
	dir, identity, signer, names := backupFolder(t)
	code, out, errOut := ssbuild(t, "backup", "verify", "--identity", identity, "--signer", signer, dir)
	if code != 0 || !strings.Contains(out, "1 items; sums match, every chunk decrypts; signed by "+signer) {
		t.Fatalf("verify: exit %d, %q %q", code, out, errOut)
	}
	code, out, errOut = ssbuild(t, "backup", "list", dir)
	if code != 0 || strings.Count(out, "demo-regtest  1 items") != 2 || !strings.HasPrefix(out, names[0]) {
		t.Errorf("list: exit %d, %q %q", code, out, errOut)
	}
	other, _ := backup.DeriveKeys(strings.Repeat("another cluster's backup secret ", 2))
	if code, _, errOut := ssbuild(t, "backup", "verify", "--signer", other.Signer(), dir); code != exitFailed || !strings.Contains(errOut, "the signature does not match") {
		t.Errorf("verify against another signer: exit %d, %q", code, errOut)
	}
	key, _ := os.ReadFile(identity)
	if strings.Contains(out+errOut, strings.TrimSpace(string(key))) {
		t.Error("verify printed the identity")
	}
	m, err := backup.Verify(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	chunk := filepath.Join("chunks", m.Items[0].Chunks[0].ID[:2], m.Items[0].Chunks[0].ID+".age")
	p := filepath.Join(dir, chunk)
	b, _ := os.ReadFile(p)
	b[len(b)-3] ^= 0x01
	os.WriteFile(p, b, 0o600)
	code, _, errOut = ssbuild(t, "backup", "verify", dir)
	if code != exitFailed || !strings.Contains(errOut, chunk+" (btcpay/db/db.sql.age in backups/"+names[1]+"): sha256") {
		t.Errorf("verify after a flipped byte: exit %d, %q; want %d naming the file", code, errOut, exitFailed)
	}
	// The older backup does not use that chunk: it verifies alone, and
	// prune --keep 1 removes it and leaves the newer one as it was.
	if code, _, errOut := ssbuild(t, "backup", "verify", filepath.Join(dir, "backups", names[0])); code != 0 {
		t.Errorf("verify of the older backup alone: exit %d, %q", code, errOut)
	}
	os.WriteFile(p, append(b[:len(b)-3:len(b)-3], b[len(b)-3]^0x01, b[len(b)-2], b[len(b)-1]), 0o600)
	code, out, errOut = ssbuild(t, "backup", "prune", "--keep", "1", dir)
	if code != 0 || !strings.Contains(out, "removed 1 backups ["+names[0]+"] and 1 chunks") {
		t.Errorf("prune: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := ssbuild(t, "backup", "verify", "--identity", identity, "--signer", signer, dir); code != 0 {
		t.Errorf("verify after prune: exit %d, %q", code, errOut)
	}
	if code, _, _ := ssbuild(t, "backup", "prune", dir); code != exitUsage {
		t.Errorf("prune without --keep: exit %d, want %d", code, exitUsage)
	}
	if code, _, _ := ssbuild(t, "backup", "verify"); code != exitUsage {
		t.Errorf("verify without a folder: exit %d, want %d", code, exitUsage)
	}
	if code, _, errOut := ssbuild(t, "backup", "--recipe", "demo", "demo"); code != exitUsage || !strings.Contains(errOut, "--to DIR") {
		t.Errorf("backup without --to: exit %d, %q", code, errOut)
	}
	if code, _, errOut := ssbuild(t, "restore", "--recipe", "demo", "--from", dir, "demo"); code != exitUsage || !strings.Contains(errOut, "--identity FILE") {
		t.Errorf("restore without --identity: exit %d, %q", code, errOut)
	}
	if code, _, errOut := ssbuild(t, "backup", "test", "--recipe", "demo", "--from", dir, "demo"); code != exitUsage || !strings.Contains(errOut, "--identity FILE") {
		t.Errorf("backup test without --identity: exit %d, %q", code, errOut)
	}
	if code, _, errOut := ssbuild(t, "backup", "test", "--recipe", "demo", "--from", dir, "--identity", "k", "nosuch"); code != exitUsage || !strings.Contains(errOut, "no deployment \"nosuch\"") {
		t.Errorf("backup test of an unknown deployment: exit %d, %q", code, errOut)
	}
}
