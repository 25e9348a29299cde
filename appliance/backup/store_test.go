package backup

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/s2"
)

// TestCompressedChunks: a dump is stored compressed (its chunk files are a
// small part of its size), an incompressible volume raw, and both verify
// and decrypt to their bytes; a payload of an unknown encoding or one that
// would decode past a chunk's size is refused.
func TestCompressedChunks(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	keys := testKeys(t, "deployment secret")
	dir := filepath.Join(t.TempDir(), "b")
	var dump []byte
	for i := range 60000 {
		dump = append(dump, "INSERT INTO pgbench_accounts VALUES ("...)
		dump = append(dump, []byte(strings.Repeat(" ", 40)+string(rune('0'+i%10))+");\n")...)
	}
	vol := noise(7, 3<<20)
	m := add(t, dir, keys, id, t0, map[string][]byte{"btcpay/db/db.sql.age": dump, "btcpay/web/data.tar.age": vol})
	var stored [2]int64
	for i, it := range m.Items {
		for _, c := range it.Chunks {
			stored[i] += c.Size
		}
	}
	t.Logf("dump %d bytes stored in %d; volume %d in %d", len(dump), stored[0], len(vol), stored[1])
	if stored[0] > int64(len(dump))/10 {
		t.Errorf("the dump (%d bytes) takes %d bytes of chunks: not compressed", len(dump), stored[0])
	}
	if stored[1] < int64(len(vol)) || stored[1] > int64(len(vol))+int64(len(m.Items[1].Chunks))*(1<<10) {
		t.Errorf("the incompressible volume (%d bytes) takes %d bytes of chunks; want it raw, plus age's overhead", len(vol), stored[1])
	}
	if _, err := VerifyWith(dir, VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain(t, dir, "btcpay/db/db.sql.age", id), dump) || !bytes.Equal(plain(t, dir, "btcpay/web/data.tar.age", id), vol) {
		t.Error("a compressed backup decrypts to other content")
	}
	for _, p := range [][]byte{{}, {9, 1, 2}, append([]byte{payloadS2}, s2.Encode(nil, make([]byte, maxChunk+1))...)} {
		if _, err := decodePayload(p); err == nil {
			t.Errorf("payload % x...: decoded", p[:min(len(p), 3)])
		}
	}
}

// TestOldFormatRefused: a backup of format 2 (raw chunks under other
// names), even signed by the deployment's key, is refused by verify and
// decrypt naming its format, and a new backup into its folder reuses none
// of its chunks.
func TestOldFormatRefused(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	keys := testKeys(t, "deployment secret")
	dir := filepath.Join(t.TempDir(), "b")
	items := map[string][]byte{"btcpay/web/data.tar.age": noise(8, 2<<20)}
	m := add(t, dir, keys, id, t0, items)

	// The same backup as format 2 would have written it (signed, summed).
	m.Format = 2
	b, _ := json.MarshalIndent(m, "", "  ")
	b = append(b, '\n')
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(keys.sign, b)) + "\n"
	bdir := filepath.Join(dir, backupsDir, m.Name)
	os.WriteFile(filepath.Join(bdir, ManifestFile), b, 0o600)
	os.WriteFile(filepath.Join(bdir, SigFile), []byte(sig), 0o600)
	sums, _ := os.ReadFile(filepath.Join(bdir, SumsFile))
	lines := strings.Split(string(sums), "\n")
	rel := path.Join(backupsDir, m.Name)
	lines[0], lines[1] = sum(b)+"  "+path.Join(rel, ManifestFile), sum([]byte(sig))+"  "+path.Join(rel, SigFile)
	os.WriteFile(filepath.Join(bdir, SumsFile), []byte(strings.Join(lines, "\n")), 0o600)

	if _, err := VerifyWith(dir, VerifyOptions{Signer: keys.Signer()}); err == nil || !strings.Contains(err.Error(), "format 2, written by another ssbuild") {
		t.Errorf("verify of a format-2 backup: %v", err)
	}
	if err := Decrypt(dir, "btcpay/web/data.tar.age", []age.Identity{id}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "format 2") {
		t.Errorf("decrypt of a format-2 backup: %v", err)
	}
	second := add(t, dir, keys, id, t0.Add(time.Hour), items)
	if second.Stats.Reused != 0 || second.Stats.New != second.Stats.Chunks {
		t.Errorf("a backup into a folder of format 2: %+v; want every chunk written anew", second.Stats)
	}
	if _, err := VerifyWith(filepath.Join(dir, backupsDir, second.Name), VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
		t.Errorf("the new backup beside a format-2 one: %v", err)
	}
}
