// Package rootfstest gives tests one real Debian bookworm minbase root
// filesystem, debootstrapped once into a cache shared by every test binary
// of a run (and by later runs on the same machine), and copied into a fresh
// directory per test.
package rootfstest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// Mirror is the Debian mirror tests build from (reachable from CI).
const Mirror = "http://deb.debian.org/debian"

// Bookworm is the spec every test shares, so they share one cache entry.
func Bookworm() rootfs.Debootstrap {
	return rootfs.Debootstrap{
		Suite:      "bookworm",
		Mirror:     Mirror,
		Keyring:    "/usr/share/keyrings/debian-archive-keyring.gpg",
		Variant:    "minbase",
		Components: []string{"main"},
	}
}

// CacheDir is the well-known cache shared across test binaries. Builds of
// one key are serialised by the cache's lock, so parallel packages wait for
// the first debootstrap instead of running their own.
func CacheDir() string { return filepath.Join(os.TempDir(), "ssbuild-test-rootfs-cache") }

// Require skips (fails under CI) unless the machine can build a rootfs;
// it also skips under -short (the fast tier runs no debootstrap).
func Require(t testing.TB) {
	t.Helper()
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "debootstrap", "chroot", "cp", "tar")
	if _, err := os.Stat(Bookworm().Keyring); err != nil {
		if testenv.InCI() {
			t.Fatalf("CI=true but %v (install debian-archive-keyring)", err)
		}
		t.Skip(err)
	}
}

// Dir returns a fresh copy of the shared bookworm rootfs, removed (after
// unmounting anything a failed test left in it) when the test ends.
func Dir(t testing.TB) string {
	t.Helper()
	Require(t)
	dest := filepath.Join(t.TempDir(), "rootfs")
	// Registered after TempDir's own cleanup, so it runs first: nothing
	// may still be mounted when the tree is removed.
	t.Cleanup(func() {
		if err := mounts.RemoveTree(dest); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	b := rootfs.Builder{CacheDir: CacheDir()}
	if _, err := b.Debootstrap(ctx, Bookworm(), dest); err != nil {
		t.Fatalf("bookworm rootfs: %v", err)
	}
	return dest
}
