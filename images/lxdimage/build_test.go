package lxdimage_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// smallTree makes a tree with every kind of entry an image can hold: files
// with odd modes and owners, a hard link, a symlink, a fifo, a device node,
// an xattr, and a path longer than ustar's 100 bytes.
func smallTree(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t) // owners and device nodes
	dir := filepath.Join(t.TempDir(), "tree")
	long := filepath.Join(dir, "usr", strings.Repeat("long-directory-name/", 6))
	must(t, os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(t, os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
	must(t, os.MkdirAll(long, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "etc", "os-release"), []byte("ID=test\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "etc", "with space"), nil, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "etc", `with"quote`), nil, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "etc", "shadow"), []byte("root:*:1::::::\n"), 0o640))
	must(t, os.Chown(filepath.Join(dir, "etc", "shadow"), 0, 42))
	must(t, os.WriteFile(filepath.Join(dir, "usr", "tool"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Chmod(filepath.Join(dir, "usr", "tool"), 0o4755|os.ModeSetuid))
	must(t, os.Link(filepath.Join(dir, "usr", "tool"), filepath.Join(dir, "usr", "tool-link")))
	must(t, os.Symlink("../etc/os-release", filepath.Join(dir, "usr", "os-release")))
	must(t, os.WriteFile(filepath.Join(long, "deep-file"), []byte("deep\n"), 0o600))
	must(t, unix.Mkfifo(filepath.Join(dir, "dev", "fifo"), 0o600))
	must(t, unix.Mknod(filepath.Join(dir, "dev", "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, os.Chmod(filepath.Join(dir, "dev", "null"), 0o666)) // past the umask
	if err := unix.Lsetxattr(filepath.Join(dir, "usr", "tool"), "user.ssbuild", []byte("kept"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	// A build folder as MkdirTemp makes it: the image's / must still be
	// 0755 root:root.
	must(t, os.Chmod(dir, 0o700))
	must(t, os.Chown(dir, 1000, 1000))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func smallSpec(rootfs, out string) lxdimage.Spec {
	return lxdimage.Spec{RootFS: rootfs, OutDir: out, Epoch: epoch, Compression: "gzip",
		Properties: lxdimage.Properties{OS: "test", Release: "one"}}
}

// TestUnifiedTarballEntries reads the unified tarball back the way LXD's tar
// does and checks every kind of entry, and that touching the tree's times
// (as a copy or a read does) changes no byte.
func TestUnifiedTarballEntries(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs")
	tree := smallTree(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	build(t, smallSpec(tree, a))
	later := time.Now().Add(time.Hour)
	must(t, os.Chtimes(filepath.Join(tree, "etc", "os-release"), later, later))
	build(t, smallSpec(tree, b))
	for _, name := range []string{imagedir.UnifiedFile, imagedir.SquashfsFile, imagedir.MetadataFile} {
		if sha256Of(t, filepath.Join(a, name)) != sha256Of(t, filepath.Join(b, name)) {
			t.Errorf("%s changed when only the tree's times changed", name)
		}
	}

	entries := readTar(t, filepath.Join(a, imagedir.UnifiedFile))
	long := "rootfs/usr/" + strings.Repeat("long-directory-name/", 6) + "deep-file"
	for _, c := range []struct {
		name     string
		typ      byte
		mode     int64
		uid, gid int
		link     string
	}{
		{name: "metadata.yaml", typ: tar.TypeReg, mode: 0o644},
		{name: "templates/hostname.tpl", typ: tar.TypeReg, mode: 0o644},
		{name: "rootfs/", typ: tar.TypeDir, mode: 0o755},
		{name: "rootfs/etc/shadow", typ: tar.TypeReg, mode: 0o640, gid: 42},
		{name: "rootfs/usr/tool", typ: tar.TypeReg, mode: 0o4755},
		{name: "rootfs/usr/tool-link", typ: tar.TypeLink, mode: 0o4755, link: "rootfs/usr/tool"},
		{name: "rootfs/usr/os-release", typ: tar.TypeSymlink, mode: 0o777, link: "../etc/os-release"},
		{name: "rootfs/dev/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "rootfs/dev/null", typ: tar.TypeChar, mode: 0o666},
		{name: long, typ: tar.TypeReg, mode: 0o600},
	} {
		h, ok := entries[c.name]
		if !ok {
			t.Errorf("%s: not in the tarball", c.name)
			continue
		}
		if h.Typeflag != c.typ || h.Mode != c.mode || h.Uid != c.uid || h.Gid != c.gid || h.Linkname != c.link {
			t.Errorf("%s: type %c mode %o owner %d:%d link %q; want %c %o %d:%d %q", c.name,
				h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname, c.typ, c.mode, c.uid, c.gid, c.link)
		}
		if h.ModTime.Unix() != epoch || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %s atime %s ctime %s names %q/%q; want the epoch, no atime/ctime, no names",
				c.name, h.ModTime, h.AccessTime, h.ChangeTime, h.Uname, h.Gname)
		}
	}
	if h := entries["rootfs/dev/null"]; h != nil && (h.Devmajor != 1 || h.Devminor != 3) {
		t.Errorf("/dev/null is %d,%d, want 1,3", h.Devmajor, h.Devminor)
	}
	if h := entries["rootfs/usr/tool"]; h != nil && h.PAXRecords["SCHILY.xattr.user.ssbuild"] != "kept" {
		t.Errorf("xattr user.ssbuild not kept: %v", h.PAXRecords)
	}
}

func readTar(t *testing.T, path string) map[string]*tar.Header {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	must(t, err)
	tr := tar.NewReader(zr)
	out := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		must(t, err)
		out[h.Name] = h
	}
}

// TestMetadataYAML checks the metadata LXD reads, field by field.
func TestMetadataYAML(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs")
	out := filepath.Join(t.TempDir(), "img")
	spec := smallSpec(smallTree(t), out)
	spec.Architecture = "x86_64"
	spec.Properties.Description = "Test image"
	build(t, spec)
	f, err := os.Open(filepath.Join(out, imagedir.MetadataFile))
	must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	must(t, err)
	if zr.Header.ModTime.Unix() > 0 || zr.Header.Name != "" {
		t.Errorf("gzip header carries time %s / name %q", zr.Header.ModTime, zr.Header.Name)
	}
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	must(t, err)
	if h.Name != "metadata.yaml" {
		t.Fatalf("first entry %s", h.Name)
	}
	body, _ := io.ReadAll(tr)
	want := `architecture: x86_64
creation_date: 1700000000
properties:
  architecture: x86_64
  description: Test image
  name: test-one-x86_64
  os: test
  release: one
templates:
  /etc/hostname:
    when:
      - create
      - copy
    create_only: false
    template: hostname.tpl
    properties: {}
  /etc/hosts:
    when:
      - create
      - copy
    create_only: false
    template: hosts.tpl
    properties: {}
`
	if string(body) != want {
		t.Errorf("metadata.yaml:\n%s\nwant:\n%s", body, want)
	}
}

// A failed build leaves no output folder and no temporary sibling, and its
// error names the step and carries the tool's own message.
func TestFailedBuildLeavesNothing(t *testing.T) {
	t.Run("rootfs missing", func(t *testing.T) {
		dir := t.TempDir()
		_, err := lxdimage.Build(context.Background(), smallSpec(filepath.Join(dir, "nope"), filepath.Join(dir, "out")))
		if err == nil || !strings.Contains(err.Error(), "rootfs:") || !strings.Contains(err.Error(), "no such file") {
			t.Errorf("error %v, want it to name the missing rootfs", err)
		}
		assertOnly(t, dir)
	})
	t.Run("mksquashfs fails", func(t *testing.T) {
		testenv.RequireTools(t, "mksquashfs")
		tree := smallTree(t)
		dir := t.TempDir()
		spec := smallSpec(tree, filepath.Join(dir, "out"))
		spec.Compression = "nonesuch"
		_, err := lxdimage.Build(context.Background(), spec)
		if err == nil {
			t.Fatal("build with an unknown compressor succeeded")
		}
		t.Log(err)
		for _, want := range []string{"squashfs:", "mksquashfs", `Compressor "nonesuch" is not supported`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		assertOnly(t, dir)
	})
	t.Run("mkfs.ext4 fails", func(t *testing.T) {
		testenv.RequireTools(t, "mksquashfs", "mkfs.ext4", "debugfs", "qemu-img")
		tree := smallTree(t)
		must(t, os.WriteFile(filepath.Join(tree, "big"), bytes.Repeat([]byte{1}, 3<<20), 0o644))
		addBootFiles(t, tree)
		dir := t.TempDir()
		spec := smallSpec(tree, filepath.Join(dir, "out"))
		spec.Formats = []lxdimage.Format{lxdimage.Container, lxdimage.VM}
		spec.VM.RootSize = 2 << 20 // smaller than the tree
		_, err := lxdimage.Build(context.Background(), spec)
		if err == nil {
			t.Fatal("a root partition smaller than the tree was accepted")
		}
		for _, want := range []string{"vm: ext4:", "mkfs.ext4", "Could not allocate block"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		assertOnly(t, dir) // the container image, already written, goes too
	})
	t.Run("output exists", func(t *testing.T) {
		dir := t.TempDir()
		must(t, os.Mkdir(filepath.Join(dir, "out"), 0o755))
		_, err := lxdimage.Build(context.Background(), smallSpec(dir, filepath.Join(dir, "out")))
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("error %v, want: output already exists", err)
		}
		assertOnly(t, dir, "out")
	})
	t.Run("no epoch", func(t *testing.T) {
		dir := t.TempDir()
		spec := smallSpec(dir, filepath.Join(dir, "out"))
		spec.Epoch = 0
		if _, err := lxdimage.Build(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
			t.Errorf("error %v, want one about the missing epoch", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		testenv.RequireTools(t, "mksquashfs")
		tree := smallTree(t)
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := lxdimage.Build(ctx, smallSpec(tree, filepath.Join(dir, "out"))); !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
		assertOnly(t, dir)
	})
}

// assertOnly fails unless dir holds exactly the names given.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	must(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v after a failed build, want %v", dir, got, names)
	}
}

// TestProgress checks that the long steps report through the progress
// reporter, as ssbuild's --json shows them.
func TestProgress(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "mkfs.ext4", "debugfs", "qemu-img")
	var buf bytes.Buffer
	tree := smallTree(t)
	addBootFiles(t, tree)
	spec := smallSpec(tree, filepath.Join(t.TempDir(), "out"))
	spec.Progress = progress.New(&buf, progress.JSON)
	spec.Formats = []lxdimage.Format{lxdimage.Container, lxdimage.VM}
	build(t, spec)
	done := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var ev progress.Event
		must(t, json.Unmarshal([]byte(line), &ev))
		if ev.Event == "done" {
			done[ev.Task] = true
		}
	}
	for _, task := range []string{"squashfs", "unified tarball", "ext4", "ESP", "qcow2"} {
		if !done[task] {
			t.Errorf("no done event for %q in:\n%s", task, buf.String())
		}
	}
}

// TestVMRootKeepsEveryEntry builds the VM disk from the small tree: names
// debugfs must quote, a device node, a hard link and the xattr reach the
// ext4 root, all stamped with the epoch, and e2fsck finds it clean.
func TestVMRootKeepsEveryEntry(t *testing.T) {
	testenv.RequireTools(t, "mkfs.ext4", "debugfs", "e2fsck", "qemu-img", "sgdisk")
	tmp := t.TempDir()
	tree := smallTree(t)
	addBootFiles(t, tree)
	spec := smallSpec(tree, filepath.Join(tmp, "out"))
	spec.Formats = []lxdimage.Format{lxdimage.VM}
	build(t, spec)
	raw := filepath.Join(tmp, "disk.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", filepath.Join(spec.OutDir, imagedir.DiskFile), raw)
	parts := partitions(t, run(t, "sgdisk", "-p", raw))
	if len(parts) != 2 {
		t.Fatalf("partitions %+v", parts)
	}
	root := extract(t, raw, parts[1], filepath.Join(tmp, "root.ext4"))
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	for path, want := range map[string][]string{
		"/etc/with space": {"Type: regular", "mtime: 0x6553f100", "atime: 0x6553f100", "ctime: 0x6553f100"},
		`/etc/with"quote`: {"Type: regular", "mtime: 0x6553f100", "ctime: 0x6553f100"},
		"/dev/null":       {"Type: character special", "ctime: 0x6553f100", "Device major/minor number: 01:03"},
		"/usr/tool":       {"Links: 2", "Mode:  04755", "ctime: 0x6553f100"},
		"/usr/os-release": {"Type: symlink", "ctime: 0x6553f100", `Fast link dest: "../etc/os-release"`},
		"/etc/shadow":     {"Group:    42"},
	} {
		// debugfs -R takes one command line; quote as the build does.
		stat := run(t, "debugfs", "-R", `stat "`+strings.ReplaceAll(path, `"`, `""`)+`"`, root)
		for _, w := range want {
			if !strings.Contains(stat, w) {
				t.Errorf("%s lacks %q:\n%s", path, w, stat)
			}
		}
	}
	if xattr := run(t, "debugfs", "-R", "ea_get /usr/tool user.ssbuild", root); !strings.Contains(xattr, "kept") {
		t.Errorf("xattr user.ssbuild on /usr/tool: %q", xattr)
	}
}

// Without a compression asked for, the squashfs is xz (smaller to ship).
func TestSquashfsRootIsRootOwned(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "unsquashfs")
	spec := smallSpec(smallTree(t), filepath.Join(t.TempDir(), "out"))
	build(t, spec)
	out := run(t, "unsquashfs", "-lln", filepath.Join(spec.OutDir, imagedir.SquashfsFile))
	if first, _, _ := strings.Cut(out, "\n"); !strings.HasPrefix(first, "drwxr-xr-x 0/0 ") {
		t.Errorf("squashfs root: %q, want drwxr-xr-x 0/0", first)
	}
}

func TestDefaultCompressionIsXz(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "unsquashfs")
	spec := smallSpec(smallTree(t), filepath.Join(t.TempDir(), "out"))
	spec.Compression = ""
	build(t, spec)
	if out := run(t, "unsquashfs", "-s", filepath.Join(spec.OutDir, imagedir.SquashfsFile)); !strings.Contains(out, "Compression xz") {
		t.Errorf("unsquashfs -s:\n%s", out)
	}
}
