// Package demopg makes the demo's database image, ssbuild-demo/postgres:15,
// the way the demo makes its busybox web image: `docker import` of a small
// root filesystem, since no registry is reachable. The tree is Debian
// bookworm's postgresql-15 installed into the shared bookworm minbase (a
// cached rootfs layer, so it is built once per machine), cut down to the
// server, psql, pg_dump and the libraries they load, plus the build
// machine's static busybox for a shell and a web server. The same image
// runs the demo's database and the btcpay stand-in that writes and reads
// a row in it (recipes/stacks/demo/btcpay.yaml).
package demopg

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

// Ref is the image's name, as the demo recipe lists it.
const Ref = "ssbuild-demo/postgres:15"

// layerVersion changes whenever what Tree puts in the image changes, so an
// older cached tree is not reused.
const layerVersion = "v2"

// pgBin and pgLib are where Debian installs PostgreSQL 15.
const (
	pgBin   = "usr/lib/postgresql/15/bin"
	pgLib   = "usr/lib/postgresql/15/lib"
	pgShare = "usr/share/postgresql/15"
	libDir  = "usr/lib/x86_64-linux-gnu"
)

// binaries are the programs the image carries (linked from /usr/bin);
// pg_dumpall is the sovereign stack's declared dump (appliance/backup tests it).
var binaries = []string{"postgres", "initdb", "pg_ctl", "psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_isready"}

// modules are the server's loadable modules initdb needs (plpgsql is in
// every new database, dict_snowball backs the text search configurations).
var modules = []string{"plpgsql.so", "dict_snowball.so"}

// applets are busybox's links: the shell, su, the web server and what the
// scripts use.
var applets = []string{"sh", "su", "httpd", "cat", "echo", "mkdir", "chown", "chmod", "rm", "sleep", "wget", "ls", "printf", "id", "env"}

// runScript starts the database: a new cluster on the first start (its
// superuser password from POSTGRES_PASSWORD, a database POSTGRES_DB), then
// the server as user postgres, listening on every address (the stack's
// network is internal) with password authentication over TCP and trust
// on the local socket in /tmp (for the dump command run inside it).
const runScript = `#!/bin/sh
set -e
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "$POSTGRES_PASSWORD" ] || { echo "pg-run: POSTGRES_PASSWORD is not set" >&2; exit 1; }
  umask 077
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  chown postgres /tmp/pwfile
  su postgres -s /bin/sh -c 'initdb -D "$PGDATA" -U postgres --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C' >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ -n "$POSTGRES_DB" ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | su postgres -s /bin/sh -c 'postgres --single -D "$PGDATA" postgres' >/dev/null
  fi
fi
exec su postgres -s /bin/sh -c 'exec postgres -D "$PGDATA" -c listen_addresses="*" -k /tmp'
`

// Tree puts the image's root filesystem into dest (which must not exist
// or be empty), from the layer cached in cacheDir or else built there: the
// bookworm minbase of spec with postgresql-15 installed, cut down.
func Tree(ctx context.Context, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter, dest string) error {
	if rep == nil {
		rep = progress.Discard()
	}
	baseKey, err := rootfs.DebootstrapKey(ctx, spec)
	if err != nil {
		return fmt.Errorf("demo postgres image: %w", err)
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("demo postgres image: the build machine's busybox: %w", err)
	}
	b := rootfs.Builder{CacheDir: cacheDir, Progress: rep}
	_, err = b.Derive(ctx, rootfs.Layer{
		Name: "demo postgres image",
		Key:  "demo-postgres-" + layerVersion + "-" + baseKey[:16],
		Base: func(ctx context.Context, dir string) error {
			_, err := b.Debootstrap(ctx, spec, dir)
			return err
		},
		Build: func(ctx context.Context, dir string) error {
			s, err := chroot.Open(ctx, dir, chroot.Options{Progress: rep})
			if err != nil {
				return err
			}
			err = s.Install(ctx, "postgresql-15")
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			small := dir + ".small"
			if err := assemble(dir, small, busybox); err != nil {
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
		return fmt.Errorf("demo postgres image: %w", err)
	}
	return nil
}

// assemble copies what the image needs from the installed tree full into
// a new tree dest: the programs, the modules, the shared data, time zones,
// every library they link (resolved from full), the dynamic loader,
// busybox, and the accounts.
func assemble(full, dest string, busybox []byte) error {
	copyFile := func(rel, to string) error {
		data, err := os.ReadFile(filepath.Join(full, rel))
		if err != nil {
			return err
		}
		info, err := os.Stat(filepath.Join(full, rel))
		if err != nil {
			return err
		}
		return writeFile(dest, to, data, info.Mode().Perm())
	}
	var elfs []string
	for _, b := range binaries {
		if err := copyFile(filepath.Join(pgBin, b), filepath.Join(pgBin, b)); err != nil {
			return err
		}
		elfs = append(elfs, filepath.Join(pgBin, b))
		if err := symlink(dest, filepath.Join("/", pgBin, b), filepath.Join("usr/bin", b)); err != nil {
			return err
		}
	}
	for _, m := range modules {
		if err := copyFile(filepath.Join(pgLib, m), filepath.Join(pgLib, m)); err != nil {
			return err
		}
		elfs = append(elfs, filepath.Join(pgLib, m))
	}
	for _, dir := range []string{pgShare, "usr/share/zoneinfo"} {
		err := filepath.WalkDir(filepath.Join(full, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(full, path)
			switch {
			case d.IsDir():
				return os.MkdirAll(filepath.Join(dest, rel), 0o755)
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(path)
				if err != nil {
					return err
				}
				return symlink(dest, target, rel)
			case d.Type().IsRegular():
				return copyFile(rel, rel)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("copy %s: %w", dir, err)
		}
	}
	// Every library the programs and modules link, and theirs in turn.
	seen := map[string]bool{}
	for len(elfs) > 0 {
		f := elfs[0]
		elfs = elfs[1:]
		needed, err := neededLibs(filepath.Join(full, f))
		if err != nil {
			return err
		}
		for _, lib := range needed {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			src, err := findLib(full, lib)
			if err != nil {
				return err
			}
			if err := copyFile(src, filepath.Join(libDir, lib)); err != nil {
				return err
			}
			elfs = append(elfs, src)
		}
	}
	// The loader the programs name (/lib64/ld-linux-x86-64.so.2).
	if err := copyFile(filepath.Join(libDir, "ld-linux-x86-64.so.2"), "usr/lib64/ld-linux-x86-64.so.2"); err != nil {
		return fmt.Errorf("dynamic loader: %w", err)
	}
	for _, l := range [][2]string{{"usr/lib", "lib"}, {"usr/lib64", "lib64"}, {"usr/bin", "bin"}} {
		if err := symlink(dest, l[0], l[1]); err != nil {
			return err
		}
	}
	if err := writeFile(dest, "usr/bin/busybox", busybox, 0o755); err != nil {
		return err
	}
	for _, a := range applets {
		if err := symlink(dest, "busybox", filepath.Join("usr/bin", a)); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":           "root:x:0:0:root:/root:/bin/sh\npostgres:x:70:70:PostgreSQL:/var/lib/postgresql:/bin/sh\n",
		"etc/group":            "root:x:0:\npostgres:x:70:\n",
		"etc/nsswitch.conf":    "passwd: files\ngroup: files\n",
		"usr/local/bin/pg-run": runScript,
	}
	for name, content := range files {
		perm := fs.FileMode(0o644)
		if strings.HasPrefix(name, "usr/local/bin/") {
			perm = 0o755
		}
		if err := writeFile(dest, name, []byte(content), perm); err != nil {
			return err
		}
	}
	for _, d := range []string{"var/lib/postgresql", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dest, d), 0o755); err != nil {
			return err
		}
	}
	return os.Chmod(filepath.Join(dest, "tmp"), 0o777|fs.ModeSticky)
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

// findLib returns where the tree full holds lib (relative to full), with
// its symlinks resolved inside the tree.
func findLib(full, lib string) (string, error) {
	for _, dir := range []string{libDir, pgLib} {
		rel := filepath.Join(dir, lib)
		for range 10 { // follow symlinks inside the tree
			fi, err := os.Lstat(filepath.Join(full, rel))
			if err != nil {
				break
			}
			if fi.Mode()&fs.ModeSymlink == 0 {
				return rel, nil
			}
			target, err := os.Readlink(filepath.Join(full, rel))
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

func writeFile(root, rel string, data []byte, perm fs.FileMode) error {
	path := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, perm)
}

func symlink(root, target, rel string) error {
	path := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(target, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
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

// Changes are the image settings `docker import -c` gives it.
var Changes = []string{`CMD ["/usr/local/bin/pg-run"]`, "ENV PGDATA=/var/lib/postgresql/data"}

// Build makes Ref in the Docker daemon c from the tree Tree builds (cached
// in cacheDir) and returns its image ID.
func Build(ctx context.Context, c client.APIClient, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter) (string, error) {
	work, err := os.MkdirTemp("", "ssbuild-demopg-")
	if err != nil {
		return "", err
	}
	defer mounts.RemoveTree(work)
	tree := filepath.Join(work, "rootfs")
	if err := Tree(ctx, cacheDir, spec, rep, tree); err != nil {
		return "", err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteTar(tree, pw)) }()
	body, err := c.ImageImport(ctx, image.ImportSource{Source: pr, SourceName: "-"}, Ref, image.ImportOptions{Changes: Changes})
	if err != nil {
		pr.CloseWithError(err)
		return "", fmt.Errorf("docker import %s: %w", Ref, err)
	}
	_, err = io.Copy(io.Discard, body)
	body.Close()
	pr.Close()
	if err != nil {
		return "", fmt.Errorf("docker import %s: %w", Ref, err)
	}
	info, err := c.ImageInspect(ctx, Ref)
	if err != nil {
		return "", fmt.Errorf("docker import %s: %w", Ref, err)
	}
	return info.ID, nil
}
