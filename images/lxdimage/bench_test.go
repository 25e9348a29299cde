package lxdimage

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/sovereign-stack/ssbuild/images/squashfs"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/pgz"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// The benchmarks write the bookworm tree each way and report MB/s of file
// content, against `cp -a` of the same tree on the same disk:
//
//	go test ./images/lxdimage -run '^$' -bench . -benchtime 2x

func benchTree(b *testing.B) (string, int64) {
	b.Helper()
	tree := rootfstest.Dir(b)
	var size int64
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			info, ierr := d.Info()
			if ierr != nil {
				return ierr
			}
			size += info.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return tree, size
}

func BenchmarkCopyTree(b *testing.B) {
	testenv.RequireTools(b, "cp")
	tree, size := benchTree(b)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(b.TempDir(), "copy")
		if _, err := command.Run(context.Background(), command.Cmd{Name: "cp", Args: []string{"-a", tree, dst}}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dst)
		b.StartTimer()
	}
}

func benchSquashfs(b *testing.B, comp string, extra ...string) {
	testenv.RequireTools(b, "mksquashfs")
	tree, size := benchTree(b)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := filepath.Join(b.TempDir(), "rootfs.squashfs")
		args := append(squashfsArgs(tree, out, comp, 1700000000), extra...)
		if err := squashfs.Make(context.Background(), progress.Discard(), "squashfs", args); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if info, err := os.Stat(out); err == nil {
			b.ReportMetric(float64(info.Size())/float64(size), "out/in")
		}
		os.Remove(out)
		b.StartTimer()
	}
}

// As built (every core), and on one core for comparison.
func BenchmarkSquashfsGzip(b *testing.B)        { benchSquashfs(b, "gzip") }
func BenchmarkSquashfsXz(b *testing.B)          { benchSquashfs(b, "xz") }
func BenchmarkSquashfsGzipOneCore(b *testing.B) { benchSquashfs(b, "gzip", "-processors", "1") }
func BenchmarkSquashfsXzOneCore(b *testing.B)   { benchSquashfs(b, "xz", "-processors", "1") }

// newSingleGzip is the tarballs' compressor before pgzip: one deflate
// stream on one core, for comparison.
func newSingleGzip(w io.Writer) io.WriteCloser {
	zw, _ := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	zw.ModTime = time.Unix(0, 0)
	return zw
}

// benchTarball writes the unified tarball's entries through compress
// (nil: plain tar).
func benchTarball(b *testing.B, compress func(io.Writer) io.WriteCloser) {
	tree, size := benchTree(b)
	b.SetBytes(size)
	meta, err := metadataYAML("x86_64", 1700000000, Properties{OS: "debian", Release: "bookworm"}, false)
	if err != nil {
		b.Fatal(err)
	}
	s := Spec{RootFS: tree, Epoch: 1700000000, Progress: progress.Discard()}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := filepath.Join(b.TempDir(), "container.tar")
		err = writeFile(out, func(w io.Writer) error {
			var zw io.WriteCloser
			if compress != nil {
				zw = compress(w)
				w = zw
			}
			tw := newReproducibleTar(w, s.Epoch, nil)
			if err := tw.writeGenerated(metadataEntries(meta)); err != nil {
				return err
			}
			if err := tw.writeTree(context.Background(), tree, "rootfs"); err != nil {
				return err
			}
			if err := tw.Close(); err != nil {
				return err
			}
			if zw != nil {
				return zw.Close()
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(out)
		b.StartTimer()
	}
}

// The unified tarball as shipped (gzip on every core), as it was (one
// gzip stream), and the tar writer alone.
func BenchmarkUnifiedTarball(b *testing.B) {
	benchTarball(b, func(w io.Writer) io.WriteCloser { return pgz.NewWriter(w) })
}
func BenchmarkUnifiedTarballOneStream(b *testing.B) { benchTarball(b, newSingleGzip) }
func BenchmarkTarWriter(b *testing.B)               { benchTarball(b, nil) }
