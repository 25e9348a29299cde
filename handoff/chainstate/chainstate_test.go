package chainstate_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const epoch = 1700000000

// datadirFiles is a small pruned datadir: each file starts with a marker
// naming it (so a test can find and corrupt it inside an artifact), then
// pseudo-random bytes.
var datadirFiles = map[string]int{
	"blocks/blk00000.dat":       300 << 10,
	"blocks/rev00000.dat":       40 << 10,
	"blocks/index/000003.ldb":   8 << 10,
	"blocks/index/CURRENT":      0,
	"chainstate/000005.ldb":     200 << 10,
	"chainstate/CURRENT":        0,
	"chainstate/MANIFEST-00004": 1 << 10,
	"settings.json":             0,
}

func marker(name string) string { return "MARKER<" + name + ">" }

func makeDatadir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	for name, size := range datadirFiles {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		data := []byte(marker(name))
		for range size {
			data = append(data, byte(rng.Uint32()))
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// writeSnapshot writes a synthetic AssumeUTXO snapshot: a real header and
// some bytes standing for the coins.
func writeSnapshot(t testing.TB, dir, name, network string) (string, chainstate.SnapshotHeader) {
	t.Helper()
	magic, ok := chainstate.NetworkMagic(network)
	if !ok {
		t.Fatalf("no magic for %s", network)
	}
	h := chainstate.SnapshotHeader{
		Version:       2,
		NetworkMagic:  magic,
		BaseBlockHash: "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5",
		CoinsCount:    176948713,
	}
	data, err := chainstate.MarshalSnapshotHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, []byte(marker(name))...)
	data = append(data, bytes.Repeat([]byte{0x5a, 0xa5, 0x01}, 100<<10)...)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, h
}

func fileSHA256(t testing.TB, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func pack(t testing.TB, cs recipes.Chainstate, out string) *chainstate.Artifact {
	t.Helper()
	a, err := chainstate.Pack(context.Background(), chainstate.Options{Chainstate: cs, Output: out, SourceDateEpoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// assertNoArtifact checks that a failed pack left nothing behind.
func assertNoArtifact(t *testing.T, out string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(out))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("failed pack left %s behind", e.Name())
	}
}

func TestPackDirectory(t *testing.T) {
	testenv.RequireTools(t, "tar", "sha256sum", "find", "sort", "xargs")
	src := makeDatadir(t)
	out := filepath.Join(t.TempDir(), "chainstate-regtest.tar")
	a := pack(t, recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, out)

	if a.Files != len(datadirFiles) || a.Network != "regtest" || a.Volume != "chainstate-regtest" {
		t.Errorf("artifact = %+v, want %d files of regtest in volume chainstate-regtest", a, len(datadirFiles))
	}
	if got := fileSHA256(t, out); got != a.SHA256 {
		t.Errorf("artifact file sha256 %s, Pack reported %s", got, a.SHA256)
	}
	// The documented way to compute a directory's recipe sha256 by hand.
	shell := run(t, src, "sh", "-c", `find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum`)
	if got := strings.Fields(shell)[0]; got != a.ManifestSHA256 {
		t.Errorf("manifest sha256 %s, the documented shell command gives %s", a.ManifestSHA256, got)
	}

	// GNU tar reads it as LXD lays out a volume backup, with normalised metadata.
	listing := run(t, "", "tar", "--numeric-owner", "--full-time", "-tvf", out)
	lines := strings.Split(strings.TrimSpace(listing), "\n")
	if !strings.HasSuffix(lines[0], " backup/index.yaml") || !strings.HasSuffix(lines[1], " backup/volume/") ||
		!strings.HasSuffix(lines[len(lines)-1], " backup/volume/"+chainstate.ManifestName) {
		t.Errorf("tar listing: want index.yaml, volume/, ..., manifest; got\n%s", listing)
	}
	stamp := time.Unix(epoch, 0).Local().Format("2006-01-02 15:04:05")
	for _, l := range lines {
		if !strings.Contains(l, " 0/0 ") || !strings.Contains(l, stamp) {
			t.Errorf("entry not owned by 0/0 at %s: %s", stamp, l)
		}
	}

	// Unpacked, the volume checks with sha256sum and with VerifyDir.
	x := t.TempDir()
	run(t, x, "tar", "-xf", out)
	vol := filepath.Join(x, "backup", "volume")
	run(t, vol, "sha256sum", "--strict", "-c", chainstate.ManifestName)
	if err := chainstate.VerifyDir(context.Background(), vol, chainstate.VerifyOptions{ManifestSHA256: a.ManifestSHA256}); err != nil {
		t.Error(err)
	}
	got, err := chainstate.Verify(context.Background(), out, chainstate.VerifyOptions{Network: "regtest", ManifestSHA256: a.ManifestSHA256})
	if err != nil {
		t.Fatal(err)
	}
	if got.ManifestSHA256 != a.ManifestSHA256 || got.Files != a.Files || got.Bytes != a.Bytes || got.Kind != "pruned-datadir" {
		t.Errorf("Verify = %+v, Pack = %+v", got, a)
	}
}

func TestPackDirectoryRecipeSHA256(t *testing.T) {
	src := makeDatadir(t)
	dir := t.TempDir()
	first := pack(t, recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, filepath.Join(dir, "a.tar"))
	// For a directory the recipe's sha256 is the manifest's: it packs.
	pack(t, recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src, SHA256: first.ManifestSHA256}, filepath.Join(dir, "b.tar"))

	// One changed byte in the datadir: refused before anything is written.
	p := filepath.Join(src, "chainstate", "000005.ldb")
	data, _ := os.ReadFile(p)
	data[len(data)-1] ^= 1
	os.WriteFile(p, data, 0o600)
	out := filepath.Join(t.TempDir(), "chainstate.tar")
	_, err := chainstate.Pack(context.Background(), chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src, SHA256: first.ManifestSHA256},
		Output:     out,
	})
	if err == nil || !strings.Contains(err.Error(), src) || !strings.Contains(err.Error(), first.ManifestSHA256) {
		t.Fatalf("err = %v, want one naming %s and the recipe's digest", err, src)
	}
	assertNoArtifact(t, out)
}

func TestPackTarball(t *testing.T) {
	testenv.RequireTools(t, "tar")
	src := makeDatadir(t)
	dir := t.TempDir()
	fromDir := pack(t, recipes.Chainstate{Network: "testnet", Kind: "pruned-datadir", Source: src}, filepath.Join(dir, "dir.tar"))
	// FastSync-style tarballs, made by GNU tar with the host's owners and times.
	for _, tc := range []struct{ name, flags string }{{"plain", "-cf"}, {"gzip", "-czf"}} {
		t.Run(tc.name, func(t *testing.T) {
			tarball := filepath.Join(t.TempDir(), "utxo-snapshot.tar")
			run(t, src, "tar", tc.flags, tarball, ".")
			digest := fileSHA256(t, tarball)
			out := filepath.Join(t.TempDir(), "chainstate-testnet.tar")
			a := pack(t, recipes.Chainstate{Network: "testnet", Kind: "pruned-datadir", Source: tarball, SHA256: digest}, out)
			// The same files, whatever the source's form.
			if a.ManifestSHA256 != fromDir.ManifestSHA256 || a.Files != fromDir.Files {
				t.Errorf("from tarball: manifest %s (%d files), from directory: %s (%d files)", a.ManifestSHA256, a.Files, fromDir.ManifestSHA256, fromDir.Files)
			}
			if _, err := chainstate.Verify(context.Background(), out, chainstate.VerifyOptions{Network: "testnet", ManifestSHA256: a.ManifestSHA256}); err != nil {
				t.Error(err)
			}

			// A wrong recipe sha256 names the tarball and both digests, and writes nothing.
			wrong := strings.Repeat("ab", 32)
			out2 := filepath.Join(t.TempDir(), "chainstate-testnet.tar")
			_, err := chainstate.Pack(context.Background(), chainstate.Options{
				Chainstate: recipes.Chainstate{Network: "testnet", Kind: "pruned-datadir", Source: tarball, SHA256: wrong},
				Output:     out2,
			})
			if err == nil || !strings.Contains(err.Error(), tarball) || !strings.Contains(err.Error(), digest) || !strings.Contains(err.Error(), wrong) {
				t.Fatalf("err = %v, want one naming %s, %s and %s", err, tarball, digest, wrong)
			}
			assertNoArtifact(t, out2)
		})
	}
}

func TestPackTarballRefusesLinks(t *testing.T) {
	testenv.RequireTools(t, "tar")
	src := makeDatadir(t)
	if err := os.Symlink("blk00000.dat", filepath.Join(src, "blocks", "latest.dat")); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "datadir.tar.gz")
	run(t, src, "tar", "-czf", tarball, ".")
	for _, source := range []string{src, tarball} {
		out := filepath.Join(t.TempDir(), "c.tar")
		_, err := chainstate.Pack(context.Background(), chainstate.Options{
			Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: source}, Output: out,
		})
		if err == nil || !strings.Contains(err.Error(), "blocks/latest.dat") {
			t.Errorf("%s: err = %v, want one naming blocks/latest.dat", source, err)
		}
		assertNoArtifact(t, out)
	}
}

func TestPackSnapshot(t *testing.T) {
	dir := t.TempDir()
	snap, h := writeSnapshot(t, dir, "utxo-840000.dat", "mainnet")
	digest := fileSHA256(t, snap)
	out := filepath.Join(t.TempDir(), "chainstate-mainnet.tar")
	a := pack(t, recipes.Chainstate{Network: "mainnet", Kind: "assumeutxo", Source: snap, SHA256: digest}, out)
	if a.Snapshot == nil || a.Snapshot.BaseBlockHash != h.BaseBlockHash || a.Snapshot.CoinsCount != h.CoinsCount || a.Snapshot.Network != "mainnet" {
		t.Fatalf("snapshot header = %+v, want %+v", a.Snapshot, h)
	}
	if got, want := a.Snapshot.String(), "AssumeUTXO snapshot v2 for mainnet, base block 0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5, 176948713 coins"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	got, err := chainstate.Verify(context.Background(), out, chainstate.VerifyOptions{Network: "mainnet", ManifestSHA256: a.ManifestSHA256})
	if err != nil {
		t.Fatal(err)
	}
	if got.Snapshot == nil || *got.Snapshot != *a.Snapshot || got.Source != "utxo-840000.dat" {
		t.Errorf("Verify = %+v, snapshot %+v; want snapshot %+v", got, got.Snapshot, a.Snapshot)
	}
	// The volume holds the snapshot file itself, byte for byte.
	x := t.TempDir()
	run(t, x, "tar", "-xf", out)
	if fileSHA256(t, filepath.Join(x, "backup/volume/utxo-840000.dat")) != digest {
		t.Error("the snapshot in the volume differs from the source")
	}
	// The deployment's chain is checked too.
	if _, err := chainstate.Verify(context.Background(), out, chainstate.VerifyOptions{Network: "signet"}); err == nil || !strings.Contains(err.Error(), "signet") {
		t.Errorf("verify for signet: err = %v", err)
	}
}

func TestPackSnapshotWrongNetwork(t *testing.T) {
	snap, _ := writeSnapshot(t, t.TempDir(), "utxo-90000.dat", "testnet4")
	out := filepath.Join(t.TempDir(), "chainstate.tar")
	_, err := chainstate.Pack(context.Background(), chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "mainnet", Kind: "assumeutxo", Source: snap}, Output: out,
	})
	if err == nil || !strings.Contains(err.Error(), snap) || !strings.Contains(err.Error(), "testnet4") || !strings.Contains(err.Error(), "mainnet") {
		t.Fatalf("err = %v, want one naming %s, testnet4 and mainnet", err, snap)
	}
	assertNoArtifact(t, out)
}

func TestSnapshotHeaderErrors(t *testing.T) {
	dir := t.TempDir()
	good, _ := writeSnapshot(t, dir, "good.dat", "regtest")
	data, _ := os.ReadFile(good)
	cases := map[string]struct {
		data []byte
		want string
	}{
		"truncated": {data[:20], "truncated header: 20 of 51 bytes"},
		"empty":     {nil, "truncated header: 0 of 51 bytes"},
		"bad magic": {append([]byte("utxO\xff"), data[5:]...), "bad magic"},
		"version 3": {append(append(bytes.Clone(data[:5]), 3, 0), data[7:]...), "unknown snapshot version 3"},
	}
	for name, tc := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".dat")
		os.WriteFile(p, tc.data, 0o644)
		_, err := chainstate.ReadSnapshotHeader(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want %q naming %s", name, err, tc.want, p)
		}
		out := filepath.Join(t.TempDir(), "c.tar")
		if _, err := chainstate.Pack(context.Background(), chainstate.Options{
			Chainstate: recipes.Chainstate{Network: "regtest", Kind: "assumeutxo", Source: p}, Output: out,
		}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: pack err = %v, want %q", name, err, tc.want)
		}
		assertNoArtifact(t, out)
	}

	// A custom signet's magic is not one Bitcoin Core ships.
	custom := append(bytes.Clone(data[:7]), 0xde, 0xad, 0xbe, 0xef)
	h, err := chainstate.ParseSnapshotHeader(bytes.NewReader(append(custom, data[11:]...)))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.CheckNetwork("signet"); err == nil || !strings.Contains(err.Error(), "unknown (deadbeef)") {
		t.Errorf("custom network: err = %v", err)
	}
}

// The signet magic is derived, not listed, in Bitcoin Core: the first four
// bytes of sha256d(serialized default challenge). Check ours against that.
func TestSignetMagicDerivation(t *testing.T) {
	challenge, _ := hex.DecodeString("512103ad5e0edad18cb1f0fc0d28a3d4f1f3e445640337489abb10404f2d1e086be430210359ef5021964fe22d6f8e05b2463c9540ce96883fe3b278760f048f5189f2e6c452ae")
	first := sha256.Sum256(append([]byte{byte(len(challenge))}, challenge...))
	second := sha256.Sum256(first[:])
	magic, _ := chainstate.NetworkMagic("signet")
	if !bytes.Equal(magic[:], second[:4]) {
		t.Errorf("signet magic %x, derived %x", magic, second[:4])
	}
}

func TestSnapshotBlockHashDisplayOrder(t *testing.T) {
	_, h := writeSnapshot(t, t.TempDir(), "s.dat", "mainnet")
	raw, _ := chainstate.MarshalSnapshotHeader(h)
	// On disk the uint256 is little-endian: the display's leading zeros come last.
	if got := hex.EncodeToString(raw[11:43]); !strings.HasSuffix(got, "000000000000000000") || !strings.HasPrefix(got, "a583da1c") {
		t.Errorf("serialized hash %s, want the display hash reversed", got)
	}
}

// corrupt flips one byte just after marker in the file at p.
func corrupt(t *testing.T, p, marker string) {
	t.Helper()
	data, _ := os.ReadFile(p)
	i := bytes.Index(data, []byte(marker))
	if i < 0 {
		t.Fatalf("%s not found in %s", marker, p)
	}
	data[i+len(marker)] ^= 0x80
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyNamesTheFile(t *testing.T) {
	src := makeDatadir(t)
	out := filepath.Join(t.TempDir(), "c.tar")
	a := pack(t, recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, out)
	ctx := context.Background()

	t.Run("corrupted file", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "c.tar")
		data, _ := os.ReadFile(out)
		os.WriteFile(bad, data, 0o644)
		corrupt(t, bad, marker("chainstate/000005.ldb"))
		_, err := chainstate.Verify(ctx, bad, chainstate.VerifyOptions{})
		if err == nil || !strings.Contains(err.Error(), "chainstate/000005.ldb: sha256") || !strings.Contains(err.Error(), bad) {
			t.Errorf("err = %v, want one naming chainstate/000005.ldb in %s", err, bad)
		}
		if strings.Contains(err.Error(), "blk00000") {
			t.Errorf("err names an intact file: %v", err)
		}
	})

	t.Run("tampered manifest", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "c.tar")
		data, _ := os.ReadFile(out)
		// Rewrite the recorded digest of one file in the manifest.
		line := []byte("  blocks/rev00000.dat\n")
		i := bytes.Index(data, line)
		if data[i-1] == '0' {
			data[i-1] = '1'
		} else {
			data[i-1] = '0'
		}
		os.WriteFile(bad, data, 0o644)
		_, err := chainstate.Verify(ctx, bad, chainstate.VerifyOptions{})
		if err == nil || !strings.Contains(err.Error(), "blocks/rev00000.dat: sha256") {
			t.Errorf("err = %v, want one naming blocks/rev00000.dat", err)
		}
		_, err = chainstate.Verify(ctx, bad, chainstate.VerifyOptions{ManifestSHA256: a.ManifestSHA256})
		if err == nil || !strings.Contains(err.Error(), chainstate.ManifestName) || !strings.Contains(err.Error(), a.ManifestSHA256) {
			t.Errorf("pinned: err = %v, want one naming the manifest and %s", err, a.ManifestSHA256)
		}
	})

	t.Run("missing and extra files", func(t *testing.T) {
		testenv.RequireTools(t, "tar")
		x := t.TempDir()
		run(t, x, "tar", "-xf", out)
		vol := filepath.Join(x, "backup", "volume")
		os.Remove(filepath.Join(vol, "blocks", "rev00000.dat"))
		os.WriteFile(filepath.Join(vol, "chainstate", "000006.log"), []byte("new"), 0o644)
		err := chainstate.VerifyDir(ctx, vol, chainstate.VerifyOptions{ManifestSHA256: a.ManifestSHA256})
		if err == nil || !strings.Contains(err.Error(), "blocks/rev00000.dat: missing") || !strings.Contains(err.Error(), "chainstate/000006.log: not in the manifest") {
			t.Errorf("err = %v, want the missing and the extra file named", err)
		}
		os.Remove(filepath.Join(vol, chainstate.ManifestName))
		if err := chainstate.VerifyDir(ctx, vol, chainstate.VerifyOptions{}); err == nil || !strings.Contains(err.Error(), chainstate.ManifestName+": missing") {
			t.Errorf("no manifest: err = %v", err)
		}
	})

	t.Run("not an artifact", func(t *testing.T) {
		_, err := chainstate.Verify(ctx, filepath.Join(src, "settings.json"), chainstate.VerifyOptions{})
		if err == nil || !strings.Contains(err.Error(), "not a tar archive") {
			t.Errorf("err = %v", err)
		}
		half := filepath.Join(t.TempDir(), "c.tar")
		data, _ := os.ReadFile(out)
		os.WriteFile(half, data[:len(data)/2], 0o644)
		if _, err := chainstate.Verify(ctx, half, chainstate.VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("half an artifact: err = %v", err)
		}
	})
}

func TestReproducible(t *testing.T) {
	src := makeDatadir(t)
	dir := t.TempDir()
	cs := recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}
	a := pack(t, cs, filepath.Join(dir, "1.tar"))
	// Host metadata of the source does not reach the artifact.
	filepath.Walk(src, func(p string, _ os.FileInfo, _ error) error {
		os.Chtimes(p, time.Now(), time.Now())
		os.Chmod(p, 0o755)
		return nil
	})
	b := pack(t, cs, filepath.Join(dir, "2.tar"))
	if fileSHA256(t, a.Path) != fileSHA256(t, b.Path) {
		t.Errorf("two packs with SOURCE_DATE_EPOCH=%d differ: %s vs %s", epoch, a.SHA256, b.SHA256)
	}
	c, err := chainstate.Pack(context.Background(), chainstate.Options{Chainstate: cs, Output: filepath.Join(dir, "3.tar"), SourceDateEpoch: epoch + 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.SHA256 == a.SHA256 {
		t.Error("another SOURCE_DATE_EPOCH gave the same bytes: the epoch is not stamped")
	}
}

func TestCancelledPackLeavesNothing(t *testing.T) {
	src := makeDatadir(t)
	out := filepath.Join(t.TempDir(), "c.tar")
	// A partial file from a killed earlier run is cleaned up, not kept.
	stale := filepath.Join(filepath.Dir(out), ".c.tar.123.partial")
	os.WriteFile(stale, []byte("half"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := chainstate.Pack(ctx, chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, Output: out,
	})
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("err = %v", err)
	}
	assertNoArtifact(t, out)
}

func TestManifestCanonical(t *testing.T) {
	m := chainstate.Manifest{"b": strings.Repeat("1", 64), "a/b": strings.Repeat("2", 64), "a-c": strings.Repeat("3", 64)}
	want := fmt.Sprintf("%s  a-c\n%s  a/b\n%s  b\n", strings.Repeat("3", 64), strings.Repeat("2", 64), strings.Repeat("1", 64))
	if string(m.Bytes()) != want {
		t.Errorf("Bytes() =\n%s\nwant (C-locale order)\n%s", m.Bytes(), want)
	}
	for _, bad := range []string{
		want[:len(want)-1],                                                      // no final newline
		strings.Replace(want, "a-c", "a/b", 1),                                  // duplicate
		strings.Replace(want, "  a-c", " a-c", 1),                               // one space
		strings.Replace(want, "a-c", "../x", 1),                                 // escapes the volume
		strings.Replace(want, "3333", "333Z", 1),                                // not hex
		want[strings.Index(want, "\n")+1:] + want[:strings.Index(want, "\n")+1], // order
	} {
		if _, err := chainstate.ParseManifest([]byte(bad)); err == nil {
			t.Errorf("ParseManifest accepted %q", bad)
		}
	}
	if got, err := chainstate.ParseManifest([]byte(want)); err != nil || got.Digest() != m.Digest() {
		t.Errorf("round trip: %v", err)
	}
}

// A full disk fails the pack with the reason and leaves no artifact; the
// output directory is a 1 MiB tmpfs, smaller than the datadir.
func TestPackDiskFull(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "mount", "umount")
	small := t.TempDir()
	run(t, "", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small)
	t.Cleanup(func() { run(t, "", "umount", small) })
	src := makeDatadir(t) // ~550 KiB: make it bigger than the tmpfs
	big := bytes.Repeat([]byte{1, 2, 3, 4}, 1<<18)
	os.WriteFile(filepath.Join(src, "blocks", "blk00001.dat"), big, 0o600)
	out := filepath.Join(small, "chainstate.tar")
	_, err := chainstate.Pack(context.Background(), chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, Output: out,
	})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), src) {
		t.Fatalf("err = %v, want no space left naming %s", err, src)
	}
	assertNoArtifact(t, out)
}

// Verify reads the snapshot's own header: a snapshot swapped for another
// network's inside the artifact is refused, naming the file and networks.
func TestVerifySnapshotNetworkInsideArtifact(t *testing.T) {
	snap, _ := writeSnapshot(t, t.TempDir(), "utxo-840000.dat", "mainnet")
	out := filepath.Join(t.TempDir(), "c.tar")
	pack(t, recipes.Chainstate{Network: "mainnet", Kind: "assumeutxo", Source: snap}, out)
	data, _ := os.ReadFile(out)
	mainnet, _ := chainstate.NetworkMagic("mainnet")
	testnet, _ := chainstate.NetworkMagic("testnet")
	head := append([]byte("utxo\xff\x02\x00"), mainnet[:]...)
	i := bytes.Index(data, head)
	if i < 0 {
		t.Fatal("snapshot header not found in the artifact")
	}
	copy(data[i+7:], testnet[:])
	os.WriteFile(out, data, 0o644)
	_, err := chainstate.Verify(context.Background(), out, chainstate.VerifyOptions{Network: "mainnet"})
	if err == nil || !strings.Contains(err.Error(), "utxo-840000.dat: snapshot is for network testnet, the deployment's chain is mainnet") {
		t.Errorf("err = %v", err)
	}
}

func TestPackRefusesOutputInsideSource(t *testing.T) {
	src := makeDatadir(t)
	_, err := chainstate.Pack(context.Background(), chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src},
		Output:     filepath.Join(src, "out", "c.tar"),
	})
	if err == nil || !strings.Contains(err.Error(), "inside the source directory") {
		t.Errorf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(src, "out")); !os.IsNotExist(err) {
		t.Errorf("a refused pack created its output directory: %v", err)
	}
}

// Ctrl-C in the middle of the copy: the partial artifact is removed.
func TestCancelMidPack(t *testing.T) {
	src := makeDatadir(t)
	big := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{}).Read(big)
	os.WriteFile(filepath.Join(src, "blocks", "blk00001.dat"), big, 0o600)
	out := filepath.Join(t.TempDir(), "c.tar")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Cancel once the partial file has data in it.
		for ctx.Err() == nil {
			if m, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".c.tar.*.partial")); len(m) > 0 {
				if st, err := os.Stat(m[0]); err == nil && st.Size() > 0 {
					cancel()
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	_, err := chainstate.Pack(ctx, chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, Output: out,
	})
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("err = %v, want the pack cancelled midway", err)
	}
	assertNoArtifact(t, out)
}
