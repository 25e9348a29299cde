package rootfs_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
)

// Cold: debootstrap of bookworm minbase from the Debian mirror into an
// empty cache (network and disk bound).
func BenchmarkDebootstrapCold(b *testing.B) {
	rootfstest.Require(b)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		cacheDir := b.TempDir()
		dest := filepath.Join(b.TempDir(), "rootfs")
		b.StartTimer()
		res, err := (&rootfs.Builder{CacheDir: cacheDir}).Debootstrap(ctx, rootfstest.Bookworm(), dest)
		if err != nil {
			b.Fatal(err)
		}
		if res.CacheHit {
			b.Fatal("cold build was a cache hit")
		}
		b.StopTimer()
		mounts.RemoveTree(dest)
		mounts.RemoveTree(cacheDir)
		b.StartTimer()
	}
}

// Cache hit: the same inputs again; the cost is the copy of the cached tree
// into the work dir. Reports the copy throughput.
func BenchmarkDebootstrapCacheHit(b *testing.B) {
	rootfstest.Require(b)
	ctx := context.Background()
	builder := &rootfs.Builder{CacheDir: rootfstest.CacheDir()}
	work := b.TempDir()
	warm := filepath.Join(work, "warm")
	if _, err := builder.Debootstrap(ctx, rootfstest.Bookworm(), warm); err != nil {
		b.Fatal(err)
	}
	size := treeBytes(b, warm)
	mounts.RemoveTree(warm)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dest := filepath.Join(work, "rootfs")
		res, err := builder.Debootstrap(ctx, rootfstest.Bookworm(), dest)
		if err != nil {
			b.Fatal(err)
		}
		if !res.CacheHit {
			b.Fatal("not a cache hit")
		}
		b.StopTimer()
		mounts.RemoveTree(dest)
		b.StartTimer()
	}
}

func treeBytes(b *testing.B, root string) int64 {
	var total int64
	filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}
