package backup

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// folder writes a small backup folder (one dump, one volume archive)
// encrypted to a new key, and returns it with the key.
func folder(t *testing.T) (string, *age.X25519Identity) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	if err := emptyDir(dir); err != nil {
		t.Fatal(err)
	}
	m := Manifest{Format: format, Deployment: "d", Recipients: []string{id.Recipient().String()}}
	for _, c := range []struct{ file, content string }{
		{"btcpay/db/db.sql.age", "INSERT INTO pages VALUES ('kept');\n"},
		{"btcpay/web/data.tar.age", strings.Repeat("tar bytes ", 10000)},
	} {
		it := Item{File: c.file, Kind: "dump", Instance: "btcpay"}
		if err := writeEncrypted(dir, &it, []age.Recipient{id.Recipient()}, func(w io.Writer) error {
			_, err := io.WriteString(w, c.content)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		m.Items = append(m.Items, it)
	}
	if err := writeManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	return dir, id
}

// TestVerify: a whole folder verifies and decrypts with the identity; one
// flipped byte, a missing file or a stray one fail naming the file; the
// wrong identity cannot decrypt; the folder holds no identity.
func TestVerify(t *testing.T) {
	dir, id := folder(t)
	if _, err := Verify(dir, []age.Identity{id}); err != nil {
		t.Fatalf("a whole backup: %v", err)
	}
	var plain bytes.Buffer
	if err := Decrypt(dir, "btcpay/db/db.sql.age", []age.Identity{id}, &plain); err != nil || !strings.Contains(plain.String(), "'kept'") {
		t.Fatalf("decrypted dump %q, %v", plain.String(), err)
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("AGE-SECRET-KEY")) || bytes.Contains(b, []byte("'kept'")) {
			t.Errorf("%s holds a private key or plain data", p)
		}
		return nil
	})

	t.Run("flipped byte", func(t *testing.T) {
		dir, id := folder(t)
		p := filepath.Join(dir, "btcpay/web/data.tar.age")
		b, _ := os.ReadFile(p)
		b[len(b)/2] ^= 0x01
		os.WriteFile(p, b, 0o600)
		_, err := Verify(dir, []age.Identity{id})
		if err == nil || !strings.Contains(err.Error(), "btcpay/web/data.tar.age: sha256") {
			t.Fatalf("verify after a flipped byte: %v; want the file named", err)
		}
		if strings.Contains(err.Error(), "db.sql.age") {
			t.Errorf("verify names an intact file: %v", err)
		}
		// Even with SHA256SUMS rewritten to match, decryption fails.
		if err := Decrypt(dir, "btcpay/web/data.tar.age", []age.Identity{id}, io.Discard); err == nil {
			t.Error("a changed ciphertext decrypted")
		}
	})
	t.Run("missing and stray files", func(t *testing.T) {
		dir, _ := folder(t)
		os.Remove(filepath.Join(dir, "btcpay/db/db.sql.age"))
		os.WriteFile(filepath.Join(dir, "extra"), []byte("x"), 0o600)
		_, err := Verify(dir, nil)
		if err == nil || !strings.Contains(err.Error(), "btcpay/db/db.sql.age: missing") || !strings.Contains(err.Error(), "extra: not in SHA256SUMS") {
			t.Fatalf("verify: %v", err)
		}
	})
	t.Run("wrong identity", func(t *testing.T) {
		other, _ := age.GenerateX25519Identity()
		if _, err := Verify(dir, []age.Identity{other}); err == nil || !strings.Contains(err.Error(), "no identity matched") {
			t.Fatalf("verify with another key: %v", err)
		}
	})
	t.Run("unfinished", func(t *testing.T) {
		dir, _ := folder(t)
		os.Remove(filepath.Join(dir, SumsFile))
		if _, err := Verify(dir, nil); err == nil || !strings.Contains(err.Error(), "not a finished backup") {
			t.Fatalf("verify without SHA256SUMS: %v", err)
		}
	})
	t.Run("not into a used folder", func(t *testing.T) {
		if err := emptyDir(dir); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("emptyDir of a backup: %v", err)
		}
	})
}
