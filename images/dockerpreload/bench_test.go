package dockerpreload_test

import (
	"archive/tar"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
)

// benchLayer is the size of the benchmark image's one file: big enough that
// the per-call overhead does not dominate.
const benchLayer = 256 << 20

// randomRootfs streams a tarball with one file of n pseudo-random bytes.
func randomRootfs(n int64) io.Reader {
	r, w := io.Pipe()
	go func() {
		tw := tar.NewWriter(w)
		err := tw.WriteHeader(&tar.Header{Name: "data", Mode: 0o644, Size: n, Typeflag: tar.TypeReg})
		if err == nil {
			_, err = io.CopyN(tw, rand.NewChaCha8([32]byte{}), n)
		}
		if err == nil {
			err = tw.Close()
		}
		w.CloseWithError(err)
	}()
	return r
}

// BenchmarkSave measures Save of one 256 MiB image from a private dockerd
// into a directory (archive fsynced); compare with BenchmarkCopy.
func BenchmarkSave(b *testing.B) {
	d := testdocker.Start(b)
	testdocker.Import(b, d.Client, "ssbuild-bench/big:1", randomRootfs(benchLayer))
	dir := b.TempDir()
	var size int64
	b.ResetTimer()
	for b.Loop() {
		m, err := dockerpreload.Save(context.Background(), d.Client, []dockerpreload.Image{{Ref: "ssbuild-bench/big:1"}}, dir, nil)
		if err != nil {
			b.Fatal(err)
		}
		size = m.Images[0].Size
	}
	b.SetBytes(size)
}

// BenchmarkCopy is the yardstick: `cp` of an archive of the same size on the
// same disk, then `sync` of the copy (Save fsyncs its archive too).
func BenchmarkCopy(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.tar")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(f, randomRootfs(benchLayer))
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.tar")
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := command.Output(ctx, "cp", src, dst); err != nil {
			b.Fatal(err)
		}
		if _, err := command.Output(ctx, "sync", dst); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(n)
}
