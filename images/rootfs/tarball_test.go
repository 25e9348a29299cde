package rootfs_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

func sha256File(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// packTree makes a tarball of dir's content with the tar a user would use.
func packTree(t *testing.T, dir, tarball string, flags ...string) {
	t.Helper()
	args := append([]string{"--create", "--file=" + tarball, "--numeric-owner", "--xattrs", "--directory=" + dir}, flags...)
	if _, err := command.Run(context.Background(), command.Cmd{Name: "tar", Args: append(args, ".")}); err != nil {
		t.Fatal(err)
	}
}

// A real bookworm tree survives pack → verify → unpack with its owners,
// device nodes and hard links.
func TestUnpackRootfsTarball(t *testing.T) {
	src := rootfstest.Dir(t)
	testenv.RequireTools(t, "zstd")
	work := tempTree(t)
	tarball := filepath.Join(work, "bookworm.tar.zst")
	packTree(t, src, tarball, "--zstd")

	b := rootfs.Builder{}
	res, err := b.Unpack(context.Background(), rootfs.Tarball{Path: tarball, SHA256: sha256File(t, tarball)}, filepath.Join(work, "rootfs"))
	if err != nil {
		t.Fatal(err)
	}
	osRelease, err := os.ReadFile(filepath.Join(res.Dir, "etc/os-release"))
	if err != nil || !strings.Contains(string(osRelease), "VERSION_CODENAME=bookworm") {
		t.Errorf("unpacked etc/os-release does not say bookworm: %q, %v", osRelease, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(res.Dir, "dev/null"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
		t.Errorf("dev/null is not a character device after unpacking (%v)", err)
	}
	if err := syscall.Lstat(filepath.Join(res.Dir, "etc/shadow"), &st); err != nil || st.Gid == 0 {
		t.Errorf("etc/shadow lost its group after unpacking (gid %d, %v)", st.Gid, err)
	}
	a, errA := os.Stat(filepath.Join(res.Dir, "usr/bin/gunzip"))
	c, errC := os.Stat(filepath.Join(res.Dir, "usr/bin/uncompress"))
	if errA != nil || errC != nil || !os.SameFile(a, c) {
		t.Errorf("hard link gunzip/uncompress lost after unpacking (%v, %v)", errA, errC)
	}
}

func smallRootfsTarball(t *testing.T, flags ...string) string {
	t.Helper()
	testenv.RequireTools(t, "tar", "gzip")
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc/os-release"), []byte("ID=test\n"), 0o644)
	tarball := filepath.Join(t.TempDir(), "small.tar.gz")
	packTree(t, tree, tarball, flags...)
	return tarball
}

func TestUnpackWrongDigestUnpacksNothing(t *testing.T) {
	tarball := smallRootfsTarball(t, "--gzip")
	actual := sha256File(t, tarball)
	wrong := strings.Repeat("ab", 32)
	dest := filepath.Join(t.TempDir(), "rootfs")

	b := rootfs.Builder{}
	_, err := b.Unpack(context.Background(), rootfs.Tarball{Path: tarball, SHA256: wrong}, dest)
	if !errors.Is(err, rootfs.ErrDigestMismatch) {
		t.Fatalf("want a sha256 mismatch, got %v", err)
	}
	for _, want := range []string{tarball, "expected " + wrong, "got " + actual} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	for _, p := range []string{dest, dest + ".partial"} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a refused tarball (%v)", p, err)
		}
	}

	// The same file with its right digest unpacks (the refusal was the digest).
	if _, err := b.Unpack(context.Background(), rootfs.Tarball{Path: tarball, SHA256: strings.ToUpper(actual)}, dest); err != nil {
		t.Fatalf("right digest: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(dest, "etc/os-release")); err != nil || string(data) != "ID=test\n" {
		t.Errorf("etc/os-release after unpacking: %q, %v", data, err)
	}
}

func TestUnpackRefusesBadInput(t *testing.T) {
	tarball := smallRootfsTarball(t, "--gzip")
	b := rootfs.Builder{}
	for name, tc := range map[string]struct {
		tb   rootfs.Tarball
		want string
	}{
		"no digest":      {rootfs.Tarball{Path: tarball}, "is not a hex sha256 digest"},
		"short digest":   {rootfs.Tarball{Path: tarball, SHA256: "abc"}, "is not a hex sha256 digest"},
		"missing file":   {rootfs.Tarball{Path: tarball + ".nope", SHA256: strings.Repeat("0", 64)}, "no such file"},
		"not a rootfs":   {rootfs.Tarball{Path: leadingDirTarball(t), SHA256: ""}, "not a root filesystem"},
		"not a tar file": {rootfs.Tarball{Path: notATar(t), SHA256: ""}, "tar --extract"},
		"path and URL":   {rootfs.Tarball{Path: tarball, URL: "http://127.0.0.1:9/x.tar", SHA256: strings.Repeat("0", 64)}, "give a path or a URL"},
	} {
		t.Run(name, func(t *testing.T) {
			if tc.tb.SHA256 == "" && !strings.HasPrefix(name, "no ") {
				tc.tb.SHA256 = sha256File(t, tc.tb.Path)
			}
			dest := filepath.Join(t.TempDir(), "rootfs")
			_, err := b.Unpack(context.Background(), tc.tb, dest)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error saying %q, got %v", tc.want, err)
			}
			if !strings.Contains(err.Error(), tc.tb.Path) {
				t.Errorf("error does not name the tarball %s: %v", tc.tb.Path, err)
			}
			for _, p := range []string{dest, dest + ".partial"} {
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists after a refused tarball (%v)", p, err)
				}
			}
		})
	}
}

// leadingDirTarball packs rootfs/etc/os-release: a common packing mistake.
func leadingDirTarball(t *testing.T) string {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "rootfs/etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "rootfs/etc/os-release"), []byte("ID=test\n"), 0o644)
	tarball := filepath.Join(t.TempDir(), "leading-dir.tar")
	packTree(t, tree, tarball)
	return tarball
}

func notATar(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "garbage.tar")
	os.WriteFile(p, []byte(strings.Repeat("not a tar archive\n", 100)), 0o644)
	return p
}

// serve serves the file at path on loopback and counts the requests.
func serve(t *testing.T, path string) (url string, requests *atomic.Int32) {
	t.Helper()
	requests = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.URL.Path != "/rootfs.tar.gz" {
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, path)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rootfs.tar.gz", requests
}

func TestUnpackFromURLDownloadsOnce(t *testing.T) {
	tarball := smallRootfsTarball(t, "--gzip")
	url, requests := serve(t, tarball)
	b := rootfs.Builder{CacheDir: t.TempDir()}
	tb := rootfs.Tarball{URL: url, SHA256: sha256File(t, tarball)}
	for i := 0; i < 2; i++ {
		dest := filepath.Join(t.TempDir(), "rootfs")
		res, err := b.Unpack(context.Background(), tb, dest)
		if err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(filepath.Join(res.Dir, "etc/os-release")); err != nil || string(data) != "ID=test\n" {
			t.Errorf("build %d: etc/os-release %q, %v", i+1, data, err)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("%d downloads for two builds, want 1 (the second from the cache)", n)
	}
}

func TestUnpackFromURLRefusesWrongDigestAndErrors(t *testing.T) {
	tarball := smallRootfsTarball(t, "--gzip")
	url, _ := serve(t, tarball)
	cacheDir := t.TempDir()
	b := rootfs.Builder{CacheDir: cacheDir}
	wrong := strings.Repeat("cd", 32)
	for name, tc := range map[string]struct {
		tb   rootfs.Tarball
		want []string
	}{
		"wrong digest": {rootfs.Tarball{URL: url, SHA256: wrong},
			[]string{url, "sha256 mismatch", "expected " + wrong, "got " + sha256File(t, tarball)}},
		"not found": {rootfs.Tarball{URL: url + ".missing", SHA256: wrong},
			[]string{url + ".missing", "404 Not Found"}},
		"nothing listening": {rootfs.Tarball{URL: "http://127.0.0.1:9/rootfs.tar.gz", SHA256: wrong},
			[]string{"http://127.0.0.1:9/rootfs.tar.gz", "connection refused"}},
	} {
		t.Run(name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "rootfs")
			_, err := b.Unpack(context.Background(), tc.tb, dest)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
			if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists after a refused download (%v)", dest, err)
			}
		})
	}
	// Only lock files: no download is kept that did not verify.
	entries, _ := os.ReadDir(filepath.Join(cacheDir, "tarballs"))
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("download cache holds %s", e.Name())
		}
	}
}
