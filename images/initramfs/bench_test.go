package initramfs_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/initramfs"
	"github.com/sovereign-stack/ssbuild/testkit/kerneltest"
)

// BenchmarkBuild builds the installer initramfs for Debian 12's kernel
// with this test binary (a Go binary of ssbuild's kind) as /init.
func BenchmarkBuild(b *testing.B) {
	k := kerneltest.Get(b)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	spec := initramfs.Spec{Init: self, Root: k.Root, Epoch: epoch}
	a, _, err := spec.Archive()
	if err != nil {
		b.Fatal(err)
	}
	var raw countWriter
	if _, err := a.WriteTo(&raw); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(raw))
	out := filepath.Join(b.TempDir(), "initrd.img")
	var res initramfs.Result
	for i := 0; i < b.N; i++ {
		if res, err = initramfs.Build(context.Background(), spec, out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(raw)/(1<<20), "cpio-MiB")
	b.ReportMetric(float64(res.Size)/(1<<20), "gz-MiB")
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }
