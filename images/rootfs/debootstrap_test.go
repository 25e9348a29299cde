package rootfs_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
)

// unreachable is a loopback port nothing listens on (discard).
const unreachable = "http://127.0.0.1:9/debian"

func TestDebootstrapBookwormIsCached(t *testing.T) {
	rootfstest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var log strings.Builder
	b := rootfs.Builder{CacheDir: rootfstest.CacheDir(), Progress: progress.New(&log, progress.Plain)}
	work := tempTree(t)

	start := time.Now()
	first, err := b.Debootstrap(ctx, rootfstest.Bookworm(), filepath.Join(work, "first"))
	if err != nil {
		t.Fatal(err)
	}
	firstTook := time.Since(start)
	start = time.Now()
	second, err := b.Debootstrap(ctx, rootfstest.Bookworm(), filepath.Join(work, "second"))
	if err != nil {
		t.Fatal(err)
	}
	secondTook := time.Since(start)
	t.Logf("first build %v (cache hit: %v), second build %v (cache hit: %v)",
		firstTook.Round(time.Millisecond), first.CacheHit, secondTook.Round(time.Millisecond), second.CacheHit)
	t.Logf("progress:\n%s", log.String())

	if !second.CacheHit {
		t.Errorf("second build with the same inputs was not a cache hit")
	}
	if first.CacheKey != second.CacheKey || len(first.CacheKey) != 64 {
		t.Errorf("cache keys %q and %q: want the same sha256", first.CacheKey, second.CacheKey)
	}
	if !strings.Contains(log.String(), "copy rootfs") {
		t.Errorf("no progress for the copy step in:\n%s", log.String())
	}

	if second.Inputs == nil || !strings.HasPrefix(second.Inputs.DebootstrapVer, "debootstrap ") ||
		second.Inputs.KeyringSHA256 == "" || second.BuiltAt.IsZero() {
		t.Errorf("result lacks provenance: %+v", second)
	}

	root := second.Dir
	pkgs, err := rootfs.Packages(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	var baseFiles string
	for _, p := range pkgs {
		if p.Name == "base-files" {
			baseFiles = p.Version
		}
	}
	if !strings.HasPrefix(baseFiles, "12") || len(pkgs) < 50 {
		t.Errorf("package list of the tree: %d packages, base-files %q; want bookworm's (12.x)", len(pkgs), baseFiles)
	}
	osRelease, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(osRelease), "VERSION_CODENAME=bookworm") {
		t.Errorf("etc/os-release does not say bookworm:\n%s", osRelease)
	}
	sources, err := os.ReadFile(filepath.Join(root, "etc/apt/sources.list"))
	if err != nil || !strings.Contains(string(sources), rootfstest.Mirror) {
		t.Errorf("etc/apt/sources.list does not name %s: %q, %v", rootfstest.Mirror, sources, err)
	}
	// The build machine's identity stays out of the image.
	if host, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(host) != "localhost\n" {
		t.Errorf("etc/hostname = %q, want the neutral localhost", host)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/resolv.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("etc/resolv.conf from the build machine is in the tree (%v)", err)
	}
	// The copy from the cache kept device nodes, owners and hard links.
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(root, "dev/null"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
		t.Errorf("dev/null is not a character device in the copy (%v)", err)
	}
	if err := syscall.Lstat(filepath.Join(root, "etc/shadow"), &st); err != nil || st.Gid == 0 {
		t.Errorf("etc/shadow lost its shadow group in the copy (gid %d, %v)", st.Gid, err)
	}
	a, errA := os.Stat(filepath.Join(root, "usr/bin/gunzip"))
	c, errC := os.Stat(filepath.Join(root, "usr/bin/uncompress"))
	if errA != nil || errC != nil || !os.SameFile(a, c) {
		t.Errorf("usr/bin/gunzip and usr/bin/uncompress are no longer one hard-linked file (%v, %v)", errA, errC)
	}
	assertNoTemp(t, rootfstest.CacheDir())
}

// A cold debootstrap prefetches its debs into the deb cache; a second cold
// build (tree cache emptied, deb cache kept) downloads nothing but what no
// longer verifies, and a tampered deb in the cache never reaches the tree.
func TestDebootstrapPrefetchesDebs(t *testing.T) {
	rootfstest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cacheDir := tempTree(t) // not the shared cache: both builds must be cold
	work := tempTree(t)
	build := func(name string) (string, string) {
		var log strings.Builder
		b := rootfs.Builder{CacheDir: cacheDir, Progress: progress.New(&log, progress.Plain)}
		start := time.Now()
		res, err := b.Debootstrap(ctx, rootfstest.Bookworm(), filepath.Join(work, name))
		if err != nil {
			t.Fatalf("%s build: %v\n%s", name, err, log.String())
		}
		if res.CacheHit {
			t.Fatalf("%s build was a cache hit", name)
		}
		t.Logf("%s cold build: %v", name, time.Since(start).Round(time.Millisecond))
		return res.Dir, log.String()
	}
	summary := regexp.MustCompile(`(\d+) packages listed: (\d+) in the deb cache already, (\d+) prefetched .*, (\d+) downloaded by debootstrap itself`)
	counts := func(log string) []int {
		t.Helper()
		m := summary.FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("no prefetch summary in the progress:\n%s", log)
		}
		var n []int
		for _, s := range m[1:] {
			i, _ := strconv.Atoi(s)
			n = append(n, i)
		}
		t.Logf("%s", m[0])
		return n
	}

	first, log := build("first")
	if n := counts(log); n[0] < 50 || n[2] == 0 {
		t.Errorf("first build: %d packages listed, %d prefetched; want bookworm minbase's, prefetched", n[0], n[2])
	}
	debs := filepath.Join(cacheDir, "debs")
	pkgs, err := rootfs.Packages(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	digest := map[string]string{}
	for _, p := range pkgs {
		f := filepath.Join(debs, strings.Replace(p.Name+"_"+p.Version+"_"+p.Arch+".deb", ":", "%3a", 1))
		if digest[p.Name] = fileSHA256(t, f); digest[p.Name] == "" {
			t.Errorf("deb cache lacks %s", filepath.Base(f))
		}
	}
	// A foreign deb under base-files' name: a valid package, not the one
	// the signed index names.
	var baseFiles, foreign string
	for _, p := range pkgs {
		f := filepath.Join(debs, strings.Replace(p.Name+"_"+p.Version+"_"+p.Arch+".deb", ":", "%3a", 1))
		switch p.Name {
		case "base-files":
			baseFiles = f
		case "hostname":
			foreign = f
		}
	}
	data, err := os.ReadFile(foreign)
	if err != nil || baseFiles == "" {
		t.Fatalf("base-files %q, hostname deb: %v", baseFiles, err)
	}
	if err := os.WriteFile(baseFiles, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mounts.RemoveTree(filepath.Join(cacheDir, "debootstrap")); err != nil {
		t.Fatal(err)
	}

	second, log := build("second")
	if n := counts(log); n[1] != n[0] || n[2] != 0 || n[3] != 1 {
		t.Errorf("second build: %d listed, %d cached, %d prefetched, %d downloaded by debootstrap; "+
			"want all cached, none prefetched, only the tampered base-files downloaded again", n[0], n[1], n[2], n[3])
	}
	if got := fileSHA256(t, baseFiles); got != digest["base-files"] {
		t.Errorf("the cache's base-files deb is %s after the build, want the genuine %s", got, digest["base-files"])
	}
	a, b := treeSums(t, first), treeSums(t, second)
	for path, sum := range a {
		if b[path] != sum {
			t.Errorf("%s: %q in the first tree, %q in the second", path, sum, b[path])
		}
	}
	for path := range b {
		if _, ok := a[path]; !ok {
			t.Errorf("%s only in the second tree", path)
		}
	}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// treeSums describes every entry of a tree but its times: type, mode,
// owner, content digest or link target. Left out: var/log (dpkg and apt
// write the time of day into their logs) and ldconfig's aux-cache (it
// records inode numbers and times); they differ between any two builds.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		switch rel {
		case "var/log":
			return filepath.SkipDir
		case "var/cache/ldconfig/aux-cache":
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d %d", info.Mode(), st.Uid, st.Gid, st.Rdev)
		switch {
		case info.Mode().IsRegular():
			desc += " " + fileSHA256(t, path)
		case info.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			desc += " -> " + target
		}
		sums[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

func TestDebootstrapUnreachableMirror(t *testing.T) {
	rootfstest.Require(t)
	cacheDir := t.TempDir()
	dest := filepath.Join(tempTree(t), "rootfs")
	spec := rootfstest.Bookworm()
	spec.Mirror = unreachable
	b := rootfs.Builder{CacheDir: cacheDir}

	_, err := b.Debootstrap(context.Background(), spec, dest)
	if err == nil {
		t.Fatal("debootstrap from an unreachable mirror succeeded")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"debootstrap bookworm from " + unreachable, "Failed getting release file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	assertNoEntry(t, cacheDir)
	if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destination %s exists after a failed build (%v)", dest, err)
	}
}

// Packages that cannot be verified are never installed: a suite without a
// keyring on the build machine (Ubuntu's on Debian) is refused up front.
func TestDebootstrapRefusesUnverifiedSuite(t *testing.T) {
	rootfstest.Require(t)
	cacheDir := t.TempDir()
	b := rootfs.Builder{CacheDir: cacheDir}
	spec := rootfs.Debootstrap{Suite: "jammy", Mirror: "http://127.0.0.1:9/ubuntu", Variant: "minbase",
		Keyring: filepath.Join(t.TempDir(), "missing.gpg")}
	_, err := b.Debootstrap(context.Background(), spec, filepath.Join(t.TempDir(), "rootfs"))
	if err == nil || !strings.Contains(err.Error(), "keyring") {
		t.Fatalf("missing keyring file: want an error about the keyring, got %v", err)
	}
	if _, statErr := os.Stat("/usr/share/keyrings/ubuntu-archive-keyring.gpg"); statErr == nil {
		return // this machine can verify jammy; the default-keyring case does not apply
	}
	spec.Keyring = ""
	_, err = b.Debootstrap(context.Background(), spec, filepath.Join(t.TempDir(), "rootfs"))
	if err == nil || !strings.Contains(err.Error(), "Keyring-based check was requested") ||
		!strings.Contains(err.Error(), "ubuntu-archive-keyring.gpg") {
		t.Fatalf("no keyring for jammy: want debootstrap's refusal naming the keyring, got %v", err)
	}
	t.Logf("error: %v", err)
	assertNoEntry(t, cacheDir)
}

// A build cancelled while debootstrap has proc and sys mounted in its
// target (Ctrl-C in the middle of the second stage) leaves no mount, no
// temp dir and no cache entry.
func TestDebootstrapCancelledLeavesNothing(t *testing.T) {
	rootfstest.Require(t)
	cacheDir := t.TempDir()
	dest := filepath.Join(tempTree(t), "rootfs")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := rootfs.Builder{CacheDir: cacheDir}

	sawMount := make(chan []string, 1)
	go func() {
		for ctx.Err() == nil {
			if m, _ := mounts.Under(cacheDir); len(m) > 0 {
				sawMount <- m
				cancel()
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	_, err := b.Debootstrap(ctx, rootfstest.Bookworm(), dest)
	select {
	case m := <-sawMount:
		t.Logf("cancelled while mounted: %v", m)
	default:
		t.Fatalf("debootstrap ended without ever mounting in its target (err %v); the test did not cancel it", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error does not wrap context.Canceled: %v", err)
	}
	if left, _ := mounts.Under(cacheDir); len(left) > 0 {
		t.Errorf("mounts left after cancel: %v", left)
		mounts.UnmountAll(cacheDir)
	}
	assertNoEntry(t, cacheDir)
}

// tempTree is a t.TempDir whose content is unmounted and removed before the
// testing package removes it, so a failing test cannot leave mounts behind.
func tempTree(t *testing.T) string {
	dir := t.TempDir()
	t.Cleanup(func() {
		if err := mounts.RemoveTree(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// assertNoEntry checks that cacheDir holds no entry and no temp dir: only
// lock files may remain after a failed build.
func assertNoEntry(t *testing.T, cacheDir string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(cacheDir, "debootstrap"))
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("cache holds %s after a failed build", e.Name())
		}
	}
}

func assertNoTemp(t *testing.T, cacheDir string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(cacheDir, "debootstrap"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temp dir %s left in the cache", e.Name())
		}
	}
}
