package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// backupFolder writes a one-file backup folder as ssbuild backup does and
// returns it with the identity file that decrypts it.
func backupFolder(t *testing.T) (dir, identity string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	var enc strings.Builder
	w, err := age.Encrypt(&enc, id.Recipient())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "CREATE TABLE t (x int);\n")
	w.Close()
	os.MkdirAll(filepath.Join(dir, "btcpay/db"), 0o700)
	os.WriteFile(filepath.Join(dir, "btcpay/db/db.sql.age"), []byte(enc.String()), 0o600)
	sum := func(b string) string { s := sha256.Sum256([]byte(b)); return hex.EncodeToString(s[:]) }
	manifest := fmt.Sprintf(`{"format": 1, "deployment": "demo", "project": "demo-regtest", "created": "2026-12-03T08:00:00Z",
  "items": [{"file": "btcpay/db/db.sql.age", "kind": "dump", "instance": "btcpay", "service": "db", "sha256": %q}]}
`, sum(enc.String()))
	os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(manifest), 0o600)
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(sum(manifest)+"  manifest.json\n"+sum(enc.String())+"  btcpay/db/db.sql.age\n"), 0o600)
	identity = writeFile(t, "key.txt", id.String()+"\n")
	return dir, identity
}

// ssbuild backup verify: exit 0 on a whole folder (with and without the
// identity), 1 naming the file after a flipped byte; a missing folder or
// argument is a usage error; the key never appears in the output.
func TestBackupVerifyCommand(t *testing.T) {
	dir, identity := backupFolder(t)
	code, out, errOut := ssbuild(t, "backup", "verify", "--identity", identity, dir)
	if code != 0 || !strings.Contains(out, "1 files, sums match, every file decrypts") {
		t.Fatalf("verify: exit %d, %q %q", code, out, errOut)
	}
	key, _ := os.ReadFile(identity)
	if strings.Contains(out+errOut, strings.TrimSpace(string(key))) {
		t.Error("verify printed the identity")
	}
	p := filepath.Join(dir, "btcpay/db/db.sql.age")
	b, _ := os.ReadFile(p)
	b[len(b)-3] ^= 0x01
	os.WriteFile(p, b, 0o600)
	code, _, errOut = ssbuild(t, "backup", "verify", dir)
	if code != exitFailed || !strings.Contains(errOut, "btcpay/db/db.sql.age: sha256") {
		t.Errorf("verify after a flipped byte: exit %d, %q; want %d naming the file", code, errOut, exitFailed)
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
}
