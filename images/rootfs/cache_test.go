package rootfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

func bookwormFrom(mirror string) Debootstrap {
	return Debootstrap{Suite: "bookworm", Mirror: mirror, Variant: "minbase",
		Keyring: "/usr/share/keyrings/debian-archive-keyring.gpg"}
}

// The key follows what changes debootstrap's output, and only that.
func TestCacheKey(t *testing.T) {
	testenv.RequireTools(t, "debootstrap", "dpkg")
	ctx := context.Background()
	key := func(s Debootstrap) string {
		t.Helper()
		in, err := resolveInputs(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		return in.key()
	}
	base := bookwormFrom("http://deb.debian.org/debian")
	base.Include = []string{"a", "b"}
	k := key(base)

	same := base
	same.Include = []string{"b", "a", "a"}
	if key(same) != k {
		t.Errorf("include order or duplicates changed the key")
	}
	for name, change := range map[string]func(*Debootstrap){
		"suite":      func(s *Debootstrap) { s.Suite = "trixie" },
		"mirror":     func(s *Debootstrap) { s.Mirror = "http://ftp.debian.org/debian" },
		"variant":    func(s *Debootstrap) { s.Variant = "buildd" },
		"components": func(s *Debootstrap) { s.Components = []string{"main", "contrib"} },
		"include":    func(s *Debootstrap) { s.Include = []string{"a", "b", "c"} },
		"arch":       func(s *Debootstrap) { s.Arch = "arm64" },
	} {
		s := base
		change(&s)
		if key(s) == k {
			t.Errorf("changing %s did not change the cache key", name)
		}
	}

	// Same path, other content: the keyring's bytes are in the key.
	kr := filepath.Join(t.TempDir(), "keyring.gpg")
	os.WriteFile(kr, []byte("one"), 0o644)
	withKeyring := base
	withKeyring.Keyring = kr
	k1 := key(withKeyring)
	os.WriteFile(kr, []byte("two"), 0o644)
	if key(withKeyring) == k1 {
		t.Errorf("a keyring with other content at the same path kept the cache key")
	}
}

// A build that crashed (killed with debootstrap's proc mount still in its
// temp dir) is cleaned up by the next build of the same key: the mount is
// undone before anything is removed, and no entry appears.
func TestStaleBuildRemoved(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "debootstrap", "dpkg")
	cacheDir := t.TempDir()
	t.Cleanup(func() { mounts.RemoveTree(cacheDir) })
	spec := bookwormFrom("http://127.0.0.1:9/debian")
	in, err := resolveInputs(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(cacheDir, "debootstrap", ".tmp-"+in.key()+"-crashed")
	proc := filepath.Join(stale, "rootfs", "proc")
	if err := os.MkdirAll(proc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("proc", proc, "proc", 0, ""); err != nil {
		t.Fatal(err)
	}

	b := Builder{CacheDir: cacheDir}
	_, err = b.Debootstrap(context.Background(), spec, filepath.Join(t.TempDir(), "rootfs"))
	if err == nil {
		t.Fatal("build from an unreachable mirror succeeded")
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Errorf("stale build dir %s still there (%v)", stale, err)
	}
	if m, _ := mounts.Under(cacheDir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	// /proc of this process is intact: removal did not go through the mount.
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Errorf("/proc/self/status: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(cacheDir, "debootstrap"))
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("cache holds %s after a failed build", e.Name())
		}
	}
}

// fakeEntry puts a complete-looking entry for spec into cacheDir, as a
// build at created would have left it.
func fakeEntry(t *testing.T, cacheDir string, spec Debootstrap, created time.Time) string {
	t.Helper()
	in, err := resolveInputs(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	c := cache{dir: filepath.Join(cacheDir, "debootstrap")}
	tmp := filepath.Join(c.dir, ".tmp-"+in.key()+"-fake")
	if err := os.MkdirAll(filepath.Join(tmp, "rootfs/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tmp, "rootfs/etc/os-release"), []byte("VERSION_CODENAME=cached\n"), 0o644)
	if err := c.commit(in.key(), tmp, entry{Inputs: in, Created: created, SizeBytes: 24}); err != nil {
		t.Fatal(err)
	}
	return c.rootfs(in.key())
}

// Entries are reused without touching the mirror (it is unreachable here)
// until they are older than MaxAge; an expired entry survives a failed
// rebuild.
func TestCacheHitAndExpiry(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "debootstrap", "dpkg", "cp")
	cacheDir := t.TempDir()
	spec := bookwormFrom("http://127.0.0.1:9/debian")
	cached := fakeEntry(t, cacheDir, spec, time.Now().Add(-2*time.Hour))

	b := Builder{CacheDir: cacheDir}
	dest := filepath.Join(t.TempDir(), "rootfs")
	res, err := b.Debootstrap(context.Background(), spec, dest)
	if err != nil {
		t.Fatal(err)
	}
	if !res.CacheHit {
		t.Errorf("complete entry not used")
	}
	if data, _ := os.ReadFile(filepath.Join(dest, "etc/os-release")); string(data) != "VERSION_CODENAME=cached\n" {
		t.Errorf("copied tree has etc/os-release %q", data)
	}

	b.MaxAge = time.Hour
	_, err = b.Debootstrap(context.Background(), spec, filepath.Join(t.TempDir(), "rootfs"))
	if err == nil || !strings.Contains(err.Error(), "Failed getting release file") {
		t.Fatalf("an expired entry was not rebuilt (want the mirror's failure): %v", err)
	}
	if _, err := os.Stat(filepath.Join(cached, "etc/os-release")); err != nil {
		t.Errorf("failed rebuild removed the expired entry: %v", err)
	}
}

func TestPrune(t *testing.T) {
	testenv.RequireTools(t, "debootstrap", "dpkg")
	cacheDir := t.TempDir()
	twoDaysAgo := time.Now().Add(-48 * time.Hour)
	// Trees: built two days ago and not used since (goes); built two days
	// ago but used by a build now (stays); built now (stays).
	old := fakeEntry(t, cacheDir, bookwormFrom("http://127.0.0.1:9/old"), twoDaysAgo)
	usedNow := fakeEntry(t, cacheDir, bookwormFrom("http://127.0.0.1:9/used"), twoDaysAgo)
	fresh := fakeEntry(t, cacheDir, bookwormFrom("http://127.0.0.1:9/fresh"), time.Now())
	for _, e := range []string{old, usedNow} {
		os.Chtimes(filepath.Join(filepath.Dir(e), "entry.json"), twoDaysAgo, twoDaysAgo)
	}
	cache{dir: filepath.Join(cacheDir, "debootstrap")}.used(filepath.Base(filepath.Dir(usedNow)))
	// Package layers (a recipe's image.packages changed two days ago): the
	// old one goes; one as old that a build holds now stays.
	layers := cache{dir: filepath.Join(cacheDir, "layers")}
	layer := func(key string) string {
		tmp := filepath.Join(layers.dir, ".tmp-"+key)
		os.MkdirAll(filepath.Join(tmp, "rootfs/etc"), 0o755)
		if err := layers.commit(key, tmp, entry{Created: twoDaysAgo}); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(layers.entryDir(key), "entry.json"), twoDaysAgo, twoDaysAgo)
		return layers.entryDir(key)
	}
	oldLayer, heldLayer := layer(strings.Repeat("b", 64)), layer(strings.Repeat("c", 64))
	unlock, ok, err := layers.tryLock(filepath.Base(heldLayer))
	if err != nil || !ok {
		t.Fatalf("lock the held layer: %v %v", ok, err)
	}
	defer unlock()
	tarballs := filepath.Join(cacheDir, "tarballs")
	os.MkdirAll(tarballs, 0o755)
	oldTar := filepath.Join(tarballs, strings.Repeat("a", 64))
	os.WriteFile(oldTar, []byte("x"), 0o644)
	os.Chtimes(oldTar, twoDaysAgo, twoDaysAgo)
	// The deb cache: a package no build used for two days goes, one used now stays.
	debs := filepath.Join(cacheDir, debsDir)
	os.MkdirAll(filepath.Join(debs, "partial"), 0o755)
	oldDeb, freshDeb := filepath.Join(debs, "old_1_all.deb"), filepath.Join(debs, "fresh_1_all.deb")
	os.WriteFile(oldDeb, []byte("x"), 0o644)
	os.WriteFile(freshDeb, []byte("x"), 0o644)
	os.Chtimes(oldDeb, twoDaysAgo, twoDaysAgo)

	b := Builder{CacheDir: cacheDir}
	removed, err := b.Prune(context.Background(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 4 {
		t.Errorf("removed %v, want the old tree, the old layer, the old tarball and the old deb", removed)
	}
	for _, gone := range []string{filepath.Dir(old), oldLayer, oldTar, oldDeb} {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("%s not pruned (%v)", gone, err)
		}
	}
	for what, kept := range map[string]string{
		"fresh tree": filepath.Join(fresh, "etc/os-release"), "tree used now": filepath.Join(usedNow, "etc/os-release"),
		"layer a build holds": filepath.Join(heldLayer, "rootfs/etc"), "fresh deb": freshDeb,
	} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("%s pruned: %v", what, err)
		}
	}
}

// What debootstrap leaves of the build machine and of its own run is
// scrubbed, so two cold builds of the same inputs give the same tree.
func TestScrubHostFiles(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"etc/resolv.conf", "etc/hostname", "var/log/bootstrap.log", "var/log/apt/history.log"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), []byte("from the builder\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := scrubHostFiles(root); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"etc/resolv.conf", "var/log/bootstrap.log"} {
		if _, err := os.Stat(filepath.Join(root, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there (%v)", f, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/hostname")); err != nil || string(b) != "localhost\n" {
		t.Errorf("etc/hostname: %q, %v; want localhost", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "var/log/apt/history.log")); err != nil {
		t.Errorf("a file of the image's own was removed: %v", err)
	}
	if err := scrubHostFiles(root); err != nil {
		t.Errorf("a second scrub: %v", err)
	}
}
