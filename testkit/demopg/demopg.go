// Package demopg makes the demo's database image, ssbuild-demo/postgres:15,
// the way the demo makes its busybox web image: `docker import` of a small
// root filesystem, since no registry is reachable. The tree is Debian
// bookworm's postgresql-15 cut down by slimimage to the server, psql,
// pg_dump, pg_dumpall and the libraries they load, plus the build
// machine's static busybox for a shell and a web server. The same image
// runs the demo's database and the btcpay stand-in that writes and reads
// a row in it (recipes/stacks/demo/btcpay.yaml).
package demopg

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/slimimage"
)

// Ref is the image's name, as the demo recipe lists it.
const Ref = "ssbuild-demo/postgres:15"

// layerVersion changes whenever what Tree puts in the image changes, so an
// older cached tree is not reused.
const layerVersion = "v4"

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
var applets = []string{"sh", "su", "httpd", "cat", "echo", "sed", "mkdir", "chown", "chmod", "rm", "sleep", "wget", "ls", "printf", "id", "env"}

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

// img is how slimimage makes the tree: postgresql-15 installed into the
// bookworm minbase, cut down.
var img = slimimage.Image{
	Name:     "demo postgres image",
	Key:      "demo-postgres-" + layerVersion,
	Packages: []string{"postgresql-15"},
	Assemble: assemble,
}

// Tree puts the image's root filesystem into dest (which must not exist
// or be empty), from the layer cached in cacheDir or else built there.
func Tree(ctx context.Context, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter, dest string) error {
	return slimimage.Build(ctx, cacheDir, spec, rep, img, dest)
}

// assemble keeps the programs, the modules, the shared data, time zones,
// busybox's applets, and the accounts (slimimage adds the libraries).
func assemble(full string, t *slimimage.Tree) error {
	t.LibDirs(pgLib)
	for _, b := range binaries {
		if err := t.Program(filepath.Join(pgBin, b), filepath.Join("usr/bin", b)); err != nil {
			return err
		}
	}
	for _, m := range modules {
		if err := t.Program(filepath.Join(pgLib, m)); err != nil {
			return err
		}
	}
	for _, dir := range []string{pgShare, "usr/share/zoneinfo"} {
		if err := t.CopyTree(dir); err != nil {
			return err
		}
	}
	t.Applets(applets...)
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
		if err := t.WriteFile(name, []byte(content), perm); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(t.Dir, "var/lib/postgresql"), 0o755)
}

// WriteTar writes the tree dir as a tarball for `docker import`.
func WriteTar(dir string, w io.Writer) error { return slimimage.WriteTar(dir, w) }

// Changes are the image settings `docker import -c` gives it.
var Changes = []string{`CMD ["/usr/local/bin/pg-run"]`, "ENV PGDATA=/var/lib/postgresql/data"}

// Build makes Ref in the Docker daemon c from the tree Tree builds (cached
// in cacheDir) and returns its image ID.
func Build(ctx context.Context, c client.APIClient, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter) (string, error) {
	return slimimage.Import(ctx, c, cacheDir, spec, rep, img, Ref, Changes)
}
