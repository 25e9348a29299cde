// Package slimimage makes the demo's and tests' database images from
// Debian packages, since no registry is reachable: the packages installed
// into the shared bookworm minbase (a cached rootfs layer, built once per
// machine), cut down to the programs an image needs and the libraries
// they load, plus the build machine's static busybox for a shell, then
// `docker import`ed. testkit/demopg (PostgreSQL) and testkit/demomysql
// (MariaDB) describe what they keep.
package slimimage

import (
	"archive/tar"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// LibDir is where Debian installs the libraries.
const LibDir = "usr/lib/x86_64-linux-gnu"

// Image says how an image's tree is made.
type Image struct {
	Name     string   // in progress and errors ("demo postgres image")
	Key      string   // the cached layer's key prefix, with a version bumped on every change
	Packages []string // installed into the minbase
	// Assemble copies what the image keeps from the installed tree full
	// into the new tree dest (a Tree helps).
	Assemble func(full string, dest *Tree) error
}

// Build puts the image's root filesystem into dest (which must not exist
// or be empty), from the layer cached in cacheDir or else built there.
func Build(ctx context.Context, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter, img Image, dest string) error {
	if rep == nil {
		rep = progress.Discard()
	}
	baseKey, err := rootfs.DebootstrapKey(ctx, spec)
	if err != nil {
		return fmt.Errorf("%s: %w", img.Name, err)
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%s: the build machine's busybox: %w", img.Name, err)
	}
	b := rootfs.Builder{CacheDir: cacheDir, Progress: rep}
	_, err = b.Derive(ctx, rootfs.Layer{
		Name: img.Name,
		Key:  img.Key + "-" + baseKey[:16],
		Base: func(ctx context.Context, dir string) error {
			_, err := b.Debootstrap(ctx, spec, dir)
			return err
		},
		Build: func(ctx context.Context, dir string) error {
			s, err := chroot.Open(ctx, dir, chroot.Options{Progress: rep})
			if err != nil {
				return err
			}
			err = s.Install(ctx, img.Packages...)
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			small := dir + ".small"
			t := &Tree{Full: dir, Dir: small, busybox: busybox}
			if err := img.Assemble(dir, t); err == nil {
				err = t.finish()
			}
			if err != nil {
				mounts.RemoveTree(small)
				return err
			}
			if err := mounts.RemoveTree(dir); err != nil {
				return err
			}
			return os.Rename(small, dir)
		},
	}, dest)
	if err != nil {
		return fmt.Errorf("%s: %w", img.Name, err)
	}
	return nil
}

// Tree is an image's tree being assembled from the installed tree Full.
type Tree struct {
	Full, Dir string
	busybox   []byte
	elfs      []string
	applets   []string
	libDirs   []string
}

// Program copies the ELF file rel of the installed tree (its libraries
// follow) and links it from each of links (paths in the image).
func (t *Tree) Program(rel string, links ...string) error {
	if err := t.Copy(rel); err != nil {
		return err
	}
	t.elfs = append(t.elfs, rel)
	for _, l := range links {
		if err := t.Symlink(filepath.Join("/", rel), l); err != nil {
			return err
		}
	}
	return nil
}

// LibDirs adds directories (besides LibDir) where libraries are found.
func (t *Tree) LibDirs(dirs ...string) { t.libDirs = append(t.libDirs, dirs...) }

// Applets links busybox's applets from /usr/bin.
func (t *Tree) Applets(names ...string) { t.applets = append(t.applets, names...) }

// Copy copies the file rel of the installed tree to the same place.
func (t *Tree) Copy(rel string) error { return t.copyTo(rel, rel) }

func (t *Tree) copyTo(rel, to string) error {
	path := filepath.Join(t.Full, rel)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	return t.WriteFile(to, data, info.Mode().Perm())
}

// CopyTree copies the directory rel of the installed tree, with its links.
func (t *Tree) CopyTree(rel string) error {
	err := filepath.WalkDir(filepath.Join(t.Full, rel), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(t.Full, path)
		switch {
		case d.IsDir():
			return os.MkdirAll(filepath.Join(t.Dir, r), 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return t.Symlink(target, r)
		case d.Type().IsRegular():
			return t.Copy(r)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy %s: %w", rel, err)
	}
	return nil
}

// WriteFile writes a file of the image.
func (t *Tree) WriteFile(rel string, data []byte, perm fs.FileMode) error {
	path := filepath.Join(t.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, perm)
}

// Symlink makes the link rel to target in the image.
func (t *Tree) Symlink(target, rel string) error {
	path := filepath.Join(t.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(target, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

// finish adds every library the programs link (and theirs in turn), the
// dynamic loader, the merged-/usr links, busybox and its applets, and /tmp.
func (t *Tree) finish() error {
	seen := map[string]bool{}
	elfs := t.elfs
	for len(elfs) > 0 {
		f := elfs[0]
		elfs = elfs[1:]
		needed, err := neededLibs(filepath.Join(t.Full, f))
		if err != nil {
			return err
		}
		for _, lib := range needed {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			src, err := t.findLib(lib)
			if err != nil {
				return err
			}
			if err := t.copyTo(src, filepath.Join(LibDir, lib)); err != nil {
				return err
			}
			elfs = append(elfs, src)
		}
	}
	// The loader the programs name (/lib64/ld-linux-x86-64.so.2).
	if err := t.copyTo(filepath.Join(LibDir, "ld-linux-x86-64.so.2"), "usr/lib64/ld-linux-x86-64.so.2"); err != nil {
		return fmt.Errorf("dynamic loader: %w", err)
	}
	for _, l := range [][2]string{{"usr/lib", "lib"}, {"usr/lib64", "lib64"}, {"usr/bin", "bin"}} {
		if err := t.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	if err := t.WriteFile("usr/bin/busybox", t.busybox, 0o755); err != nil {
		return err
	}
	for _, a := range t.applets {
		if err := t.Symlink("busybox", filepath.Join("usr/bin", a)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(t.Dir, "tmp"), 0o755); err != nil {
		return err
	}
	return os.Chmod(filepath.Join(t.Dir, "tmp"), 0o777|fs.ModeSticky)
}

// neededLibs lists an ELF file's DT_NEEDED entries.
func neededLibs(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return libs, nil
}

// findLib returns where the installed tree holds lib (relative to it),
// with its symlinks resolved inside the tree.
func (t *Tree) findLib(lib string) (string, error) {
	for _, dir := range append([]string{LibDir}, t.libDirs...) {
		rel := filepath.Join(dir, lib)
		for range 10 { // follow symlinks inside the tree
			fi, err := os.Lstat(filepath.Join(t.Full, rel))
			if err != nil {
				break
			}
			if fi.Mode()&fs.ModeSymlink == 0 {
				return rel, nil
			}
			target, err := os.Readlink(filepath.Join(t.Full, rel))
			if err != nil {
				return "", err
			}
			if filepath.IsAbs(target) {
				rel = strings.TrimPrefix(target, "/")
			} else {
				rel = filepath.Join(filepath.Dir(rel), target)
			}
		}
	}
	return "", fmt.Errorf("library %s not found in the installed tree", lib)
}

// WriteTar writes the tree dir as a tarball for `docker import`: sorted,
// owned by root, with fixed times, so equal trees give equal images.
func WriteTar(dir string, w io.Writer) error {
	var paths []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir {
			paths = append(paths, path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(paths)
	tw := tar.NewWriter(w)
	mtime := time.Unix(1_700_000_000, 0)
	for _, path := range paths {
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.ModTime, h.AccessTime, h.ChangeTime = mtime, time.Time{}, time.Time{}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// Import makes ref in the Docker daemon c from the image's tree (cached in
// cacheDir) with the settings changes (`docker import -c`) and returns
// its image ID.
func Import(ctx context.Context, c client.APIClient, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter, img Image, ref string, changes []string) (string, error) {
	work, err := os.MkdirTemp("", "ssbuild-slimimage-")
	if err != nil {
		return "", err
	}
	defer mounts.RemoveTree(work)
	tree := filepath.Join(work, "rootfs")
	if err := Build(ctx, cacheDir, spec, rep, img, tree); err != nil {
		return "", err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteTar(tree, pw)) }()
	body, err := c.ImageImport(ctx, image.ImportSource{Source: pr, SourceName: "-"}, ref, image.ImportOptions{Changes: changes})
	if err != nil {
		pr.CloseWithError(err)
		return "", fmt.Errorf("docker import %s: %w", ref, err)
	}
	_, err = io.Copy(io.Discard, body)
	body.Close()
	pr.Close()
	if err != nil {
		return "", fmt.Errorf("docker import %s: %w", ref, err)
	}
	info, err := c.ImageInspect(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("docker import %s: %w", ref, err)
	}
	return info.ID, nil
}
