package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
)

// testKeys are a deployment's backup keys from a fixed secret.
func testKeys(t testing.TB, secret string) *Keys {
	t.Helper()
	k, err := DeriveKeys(strings.Repeat(secret, 64/len(secret)+1))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// noise is n pseudo-random bytes (incompressible, like most volume data).
func noise(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// add writes one backup of items (name → content) into dir.
func add(t *testing.T, dir string, keys *Keys, id *age.X25519Identity, created time.Time, items map[string][]byte) Manifest {
	t.Helper()
	m := Manifest{Deployment: "d", Project: "d", Created: created, Recipients: []string{id.Recipient().String()}}
	w, err := NewWriter(dir, m, keys, []age.Recipient{id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"btcpay/db/db.sql.age", "btcpay/web/data.tar.age"} {
		if c, ok := items[name]; ok {
			if err := w.AddReader(Item{File: name, Kind: "dump", Instance: "btcpay"}, bytes.NewReader(c)); err != nil {
				t.Fatal(err)
			}
		}
	}
	m, err = w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var t0 = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

// folder writes a small backup folder (a dump, a volume archive of 12 MiB)
// encrypted to a new key, and returns it with the key.
func folder(t *testing.T) (string, *age.X25519Identity, *Keys) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keys := testKeys(t, "deployment secret")
	dir := filepath.Join(t.TempDir(), "b")
	add(t, dir, keys, id, t0, map[string][]byte{
		"btcpay/db/db.sql.age":    []byte("INSERT INTO pages VALUES ('kept');\n"),
		"btcpay/web/data.tar.age": noise(1, 12<<20),
	})
	return dir, id, keys
}

func plain(t *testing.T, dir, file string, id age.Identity) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Decrypt(dir, file, []age.Identity{id}, &b); err != nil {
		t.Fatalf("decrypt %s: %v", file, err)
	}
	return b.Bytes()
}

// TestVerify: a whole folder verifies and decrypts with the identity; one
// flipped byte, a missing file or a stray one fail naming the file; the
// wrong identity cannot decrypt; a changed or foreign manifest is refused
// by its signature; the folder holds no identity and no plain data.
func TestVerify(t *testing.T) {
	dir, id, keys := folder(t)
	m, err := VerifyWith(dir, VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()})
	if err != nil {
		t.Fatalf("a whole backup: %v", err)
	}
	if len(m.Items) != 2 || len(m.Items[1].Chunks) < 2 {
		t.Fatalf("manifest %+v: want 2 items, the 12 MiB one in several chunks", m.Items)
	}
	if got := plain(t, dir, "btcpay/db/db.sql.age", id); !strings.Contains(string(got), "'kept'") {
		t.Fatalf("decrypted dump %q", got)
	}
	if !bytes.Equal(plain(t, dir, "btcpay/web/data.tar.age", id), noise(1, 12<<20)) {
		t.Fatal("the volume archive decrypts to other bytes")
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("AGE-SECRET-KEY")) || bytes.Contains(b, []byte("'kept'")) {
			t.Errorf("%s holds a private key or plain data", p)
		}
		return nil
	})

	t.Run("flipped byte", func(t *testing.T) {
		dir, id, _ := folder(t)
		m, _ := Verify(dir, nil)
		c := chunkPath(m.Items[1].Chunks[1].ID)
		p := filepath.Join(dir, c)
		b, _ := os.ReadFile(p)
		b[len(b)/2] ^= 0x01
		os.WriteFile(p, b, 0o600)
		_, err := Verify(dir, []age.Identity{id})
		if err == nil || !strings.Contains(err.Error(), c+" (btcpay/web/data.tar.age in backups/"+m.Name+"): sha256") {
			t.Fatalf("verify after a flipped byte: %v; want the chunk and its item named", err)
		}
		if strings.Contains(err.Error(), "db.sql.age") {
			t.Errorf("verify names an intact item: %v", err)
		}
		if _, err := decryptChunk(dir, m.Items[1].Chunks[1].ID, []age.Identity{id}, io.Discard); err == nil {
			t.Error("a changed ciphertext decrypted")
		}
	})
	t.Run("missing and stray files", func(t *testing.T) {
		dir, _, _ := folder(t)
		m, _ := Verify(dir, nil)
		c := chunkPath(m.Items[0].Chunks[0].ID)
		os.Remove(filepath.Join(dir, c))
		os.WriteFile(filepath.Join(dir, "extra"), []byte("x"), 0o600)
		os.WriteFile(filepath.Join(dir, "backups", m.Name, "extra"), []byte("x"), 0o600)
		_, err := Verify(dir, nil)
		for _, want := range []string{c + " (btcpay/db/db.sql.age in backups/" + m.Name + "): missing", "extra: not part of any backup", "backups/" + m.Name + "/extra: not part of the backup"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("verify: %v; want %q", err, want)
			}
		}
	})
	t.Run("wrong identity", func(t *testing.T) {
		other, _ := age.GenerateX25519Identity()
		if _, err := Verify(dir, []age.Identity{other}); err == nil || !strings.Contains(err.Error(), "no identity matched") {
			t.Fatalf("verify with another key: %v", err)
		}
	})
	t.Run("unfinished", func(t *testing.T) {
		dir, _, _ := folder(t)
		m, _ := Verify(dir, nil)
		os.Remove(filepath.Join(dir, "backups", m.Name, SumsFile))
		if _, err := Verify(dir, nil); err == nil || !strings.Contains(err.Error(), "not a finished backup") {
			t.Fatalf("verify without SHA256SUMS: %v", err)
		}
	})
	t.Run("changed manifest", func(t *testing.T) {
		// Whoever can write the folder changes the manifest and rewrites
		// SHA256SUMS to match: the signature still refuses it.
		dir, _, keys := folder(t)
		m, _ := Verify(dir, nil)
		bdir := filepath.Join(dir, "backups", m.Name)
		b, _ := os.ReadFile(filepath.Join(bdir, ManifestFile))
		b = bytes.Replace(b, []byte(`"btcpay/db/db.sql.age"`), []byte(`"btcpay/db/db.sqk.age"`), 1)
		os.WriteFile(filepath.Join(bdir, ManifestFile), b, 0o600)
		sums, _ := os.ReadFile(filepath.Join(bdir, SumsFile))
		lines := strings.Split(string(sums), "\n")
		lines[0] = sha(b) + "  backups/" + m.Name + "/" + ManifestFile
		os.WriteFile(filepath.Join(bdir, SumsFile), []byte(strings.Join(lines, "\n")), 0o600)
		_, err := VerifyWith(dir, VerifyOptions{Signer: keys.Signer()})
		if err == nil || !strings.Contains(err.Error(), "backups/"+m.Name+": manifest.json: the signature does not match") {
			t.Fatalf("verify of a changed manifest: %v", err)
		}
	})
	t.Run("another signer", func(t *testing.T) {
		// A backup written whole by someone else (age needs only the public
		// recipient) is refused against the cluster's key.
		dir := filepath.Join(t.TempDir(), "b")
		add(t, dir, testKeys(t, "forger"), id, t0, map[string][]byte{"btcpay/db/db.sql.age": []byte("forged")})
		if _, err := Verify(dir, []age.Identity{id}); err != nil {
			t.Fatalf("the forged backup is whole: %v", err)
		}
		_, err := VerifyWith(dir, VerifyOptions{Signer: keys.Signer()})
		if err == nil || !strings.Contains(err.Error(), "the signature does not match") {
			t.Fatalf("verify of another key's backup against ours: %v", err)
		}
	})
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestIncremental: a second backup into the folder after a small change
// writes a chunk or two, not the data again; each backup verifies and
// decrypts to its own content alone; list shows both and what each added;
// prune keeps the newest, removes the older one's own chunks, and the
// newest still verifies; a chunk both use, damaged, names both backups.
func TestIncremental(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	keys := testKeys(t, "deployment secret")
	dir := filepath.Join(t.TempDir(), "b")
	vol := noise(2, 48<<20)
	dump := []byte(strings.Repeat("INSERT INTO pages VALUES ('row');\n", 20000))
	first := add(t, dir, keys, id, t0, map[string][]byte{"btcpay/db/db.sql.age": dump, "btcpay/web/data.tar.age": vol})
	if first.Stats.New != first.Stats.Chunks-first.Stats.Duplicate || first.Stats.Reused != 0 {
		t.Fatalf("first backup stats %+v", first.Stats)
	}

	// A row inserted in the middle of the dump, 100 bytes of the volume changed.
	vol2 := bytes.Clone(vol)
	copy(vol2[20<<20:], noise(3, 100))
	dump2 := append(append(bytes.Clone(dump[:len(dump)/2]), "INSERT INTO pages VALUES ('new');\n"...), dump[len(dump)/2:]...)
	second := add(t, dir, keys, id, t0.Add(time.Hour), map[string][]byte{"btcpay/db/db.sql.age": dump2, "btcpay/web/data.tar.age": vol2})
	t.Logf("first: %+v; second: %+v", first.Stats, second.Stats)
	if second.Stats.New > 3 || second.Stats.NewBytes > 2*maxChunk || second.Stats.Reused < second.Stats.Chunks-3 {
		t.Errorf("the second backup wrote %d of %d chunks (%d bytes); want at most 3", second.Stats.New, second.Stats.Chunks, second.Stats.NewBytes)
	}
	for _, b := range []struct {
		m         Manifest
		dump, vol []byte
	}{{first, dump, vol}, {second, dump2, vol2}} {
		one := filepath.Join(dir, "backups", b.m.Name)
		if _, err := VerifyWith(one, VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
			t.Errorf("verify %s alone: %v", b.m.Name, err)
		}
		if !bytes.Equal(plain(t, one, "btcpay/db/db.sql.age", id), b.dump) || !bytes.Equal(plain(t, one, "btcpay/web/data.tar.age", id), b.vol) {
			t.Errorf("backup %s decrypts to other content", b.m.Name)
		}
	}
	if latest, err := Latest(dir, "d"); err != nil || filepath.Base(latest) != second.Name {
		t.Errorf("latest: %s, %v; want %s", latest, err, second.Name)
	}
	f, err := List(dir)
	if err != nil || len(f.Backups) != 2 || !f.Backups[1].Finished || f.Backups[1].New > 2*maxChunk || f.Backups[0].New < 48<<20 {
		t.Errorf("list: %+v, %v", f, err)
	}

	// A chunk both backups name, damaged: verify names it with both.
	shared := chunkPath(second.Items[1].Chunks[0].ID)
	if second.Items[1].Chunks[0] != first.Items[1].Chunks[0] {
		t.Fatal("the volume's first chunk is not shared")
	}
	b, _ := os.ReadFile(filepath.Join(dir, shared))
	bad := bytes.Clone(b)
	bad[100] ^= 0x80
	os.WriteFile(filepath.Join(dir, shared), bad, 0o600)
	_, err = Verify(dir, nil)
	for _, name := range []string{first.Name, second.Name} {
		if err == nil || !strings.Contains(err.Error(), shared+" (btcpay/web/data.tar.age in backups/"+name+"): sha256") {
			t.Errorf("verify with a damaged shared chunk: %v; want it named for backup %s", err, name)
		}
	}
	os.WriteFile(filepath.Join(dir, shared), b, 0o600)

	// A third backup with no change writes nothing new.
	third := add(t, dir, keys, id, t0.Add(2*time.Hour), map[string][]byte{"btcpay/db/db.sql.age": dump2, "btcpay/web/data.tar.age": vol2})
	if third.Stats.New != 0 {
		t.Errorf("a backup with no change wrote %d chunks", third.Stats.New)
	}

	// One backup at a time in a folder.
	w, err := NewWriter(dir, Manifest{Deployment: "d", Project: "d", Created: t0.Add(3 * time.Hour)}, keys, []age.Recipient{id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewWriter(dir, Manifest{Created: t0}, keys, []age.Recipient{id.Recipient()}); err == nil || !strings.Contains(err.Error(), "another backup or prune is running") {
		t.Errorf("a second writer while one runs: %v", err)
	}
	if _, err := Prune(dir, 1); err == nil || !strings.Contains(err.Error(), "another backup or prune is running") {
		t.Errorf("prune while a backup runs: %v", err)
	}
	// An interrupted run: its backup has no SHA256SUMS, a chunk write was cut short.
	if err := w.AddReader(Item{File: "interrupted"}, bytes.NewReader(noise(6, 100))); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "chunks", "ab"), 0o700)
	os.MkdirAll(filepath.Join(dir, "chunks", "ab"), 0o700)
	os.WriteFile(filepath.Join(dir, "chunks", "ab", "cut-short.age.tmp"), []byte("x"), 0o600)
	w.stopCheckpoints()
	w.unlock()
	if _, err := Verify(dir, nil); err == nil || !strings.Contains(err.Error(), "backups/"+w.Name()+": not a finished backup") {
		t.Errorf("verify with an interrupted backup: %v", err)
	}

	r, err := Prune(dir, 1)
	if err != nil || len(r.Removed) != 3 || r.Removed[0] != first.Name || r.Removed[2] != w.Name() || r.Chunks < 3 || r.KeptBackups != 1 {
		t.Fatalf("prune --keep 1: %+v, %v", r, err)
	}
	if _, err := VerifyWith(dir, VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
		t.Errorf("verify after prune: %v", err)
	}
	if !bytes.Equal(plain(t, dir, "btcpay/web/data.tar.age", id), vol2) {
		t.Error("the kept backup decrypts to other content after prune")
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks", "ab", "cut-short.age.tmp")); err == nil {
		t.Error("prune left a cut-short chunk write")
	}
	if f, _ := List(dir); len(f.Backups) != 1 || f.UnusedChunks != 0 {
		t.Errorf("after prune: %+v", f)
	}
	if _, err := Prune(dir, 0); err == nil {
		t.Error("prune --keep 0 was accepted")
	}
}

// TestChunkNames: the same content under two deployments' keys gets other
// chunk names and other cuts; no name is the plain sha256 of a chunk.
func TestChunkNames(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	content := noise(4, 8<<20)
	var ms []Manifest
	for _, s := range []string{"one deployment", "another one"} {
		ms = append(ms, add(t, filepath.Join(t.TempDir(), "b"), testKeys(t, s), id, t0, map[string][]byte{"btcpay/web/data.tar.age": content}))
	}
	a, b := ms[0].Items[0].Chunks, ms[1].Items[0].Chunks
	if a[0].ID == b[0].ID {
		t.Error("two keys name the same chunk alike")
	}
	plainSums := map[string]bool{}
	for i := 0; i < len(content); i += 1 << 16 {
		plainSums[sha(content[i:min(i+(1<<20), len(content))])] = true
	}
	var cuts []int64
	for _, m := range ms {
		var at int64
		var c []int64
		for _, ch := range m.Items[0].Chunks {
			if plainSums[ch.ID] {
				t.Errorf("chunk %s is named by its plain sha256", ch.ID)
			}
			at += ch.Size
			c = append(c, at)
		}
		cuts = append(cuts, c[0])
	}
	if cuts[0] == cuts[1] {
		t.Errorf("both keys cut the first chunk at %d", cuts[0])
	}
}

// TestChunkerResyncs: bytes inserted near the start move only the chunks
// around them.
func TestChunkerResyncs(t *testing.T) {
	keys := testKeys(t, "chunker")
	data := noise(5, 64<<20)
	cuts := func(b []byte) map[string]bool {
		c := newChunker(bytes.NewReader(b), &keys.gear)
		out := map[string]bool{}
		defer c.close()
		for {
			p, release, err := c.next()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(p) > maxChunk {
				t.Fatalf("a chunk of %d bytes", len(p))
			}
			out[sha(p)] = true
			release()
		}
	}
	before := cuts(data)
	after := cuts(append(append(bytes.Clone(data[:1000]), "inserted"...), data[1000:]...))
	changed := 0
	for s := range after {
		if !before[s] {
			changed++
		}
	}
	if n := len(before); n < 16 || n > 64 || changed > 2 {
		t.Errorf("%d chunks of 64 MiB (want about 32 at 2 MiB on average); %d changed by an insertion", n, changed)
	}
}
