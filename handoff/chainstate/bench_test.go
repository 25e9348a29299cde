package chainstate_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// benchDatadir is 256 MiB in block-file-sized pieces: 2 × 128 MiB is what
// a pruned node keeps at the least, so the figures scale to a real datadir.
func benchDatadir(b *testing.B) (string, int64) {
	b.Helper()
	dir := b.TempDir()
	rng := rand.NewChaCha8([32]byte{1})
	var total int64
	for _, name := range []string{"blocks/blk00000.dat", "blocks/rev00000.dat", "chainstate/000005.ldb", "chainstate/000006.ldb"} {
		data := make([]byte, 64<<20)
		rng.Read(data)
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(len(data))
	}
	return dir, total
}

// BenchmarkPack packs a datadir (read, hash per file and whole artifact,
// write, fsync); compare with BenchmarkCopy, cp of the same bytes.
func BenchmarkPack(b *testing.B) {
	src, total := benchDatadir(b)
	out := filepath.Join(b.TempDir(), "c.tar")
	b.SetBytes(total)
	b.ResetTimer()
	for range b.N {
		if _, err := chainstate.Pack(context.Background(), chainstate.Options{
			Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, Output: out,
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCopy is `cp -r` of the same datadir plus a sync of the copy, the
// floor a pack cannot beat.
func BenchmarkCopy(b *testing.B) {
	src, total := benchDatadir(b)
	dst := filepath.Join(b.TempDir(), "copy")
	ctx := context.Background()
	b.SetBytes(total)
	b.ResetTimer()
	for range b.N {
		os.RemoveAll(dst)
		if _, err := command.Output(ctx, "cp", "-r", src, dst); err != nil {
			b.Fatal(err)
		}
		if _, err := command.Output(ctx, "sync", "-f", dst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify re-hashes a packed datadir, what a host does before use.
func BenchmarkVerify(b *testing.B) {
	src, total := benchDatadir(b)
	out := filepath.Join(b.TempDir(), "c.tar")
	a, err := chainstate.Pack(context.Background(), chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, Output: out,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	b.ResetTimer()
	for range b.N {
		if _, err := chainstate.Verify(context.Background(), out, chainstate.VerifyOptions{ManifestSHA256: a.ManifestSHA256}); err != nil {
			b.Fatal(err)
		}
	}
}
