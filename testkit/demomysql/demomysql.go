// Package demomysql makes a MySQL-compatible database image for tests,
// ssbuild-test/mariadb:10.11, as demopg makes PostgreSQL's: Debian
// bookworm's MariaDB server and clients cut down by slimimage, then
// `docker import`ed, since no registry is reachable. The sovereign stack
// names the official mysql image; its entrypoint is not available here,
// so the image's own start script (mysql-run) makes the data directory
// with the root password from MYSQL_ROOT_PASSWORD, as that entrypoint
// does, and the stack's declared dump and restore (mysqldump, mysql, with
// MYSQL_PWD) run against it.
package demomysql

import (
	"context"
	"io/fs"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/slimimage"
)

// Ref is the image's name.
const Ref = "ssbuild-test/mariadb:10.11"

// layerVersion changes whenever what the image holds changes, so an older
// cached tree is not reused.
const layerVersion = "v1"

// programs are kept with the names the stack's commands use.
var programs = map[string][]string{
	"usr/sbin/mariadbd":     {"usr/sbin/mysqld"},
	"usr/bin/mariadb":       {"usr/bin/mysql"},
	"usr/bin/mariadb-dump":  {"usr/bin/mysqldump"},
	"usr/bin/mariadb-admin": {"usr/bin/mysqladmin"},
}

var applets = []string{"sh", "cat", "echo", "mkdir", "chown", "chmod", "rm", "sleep", "ls", "env", "id"}

// runScript starts the server: on the first start a new data directory
// (the system tables as mariadb-install-db loads them, a shell script
// needing tools the image lacks), root's password set from
// MYSQL_ROOT_PASSWORD (on stdin, never on a command line) and no
// anonymous accounts; then the server as user mysql.
const runScript = `#!/bin/sh
set -e
DATADIR=/var/lib/mysql
mkdir -p "$DATADIR" /run/mysqld
chown mysql:mysql "$DATADIR" /run/mysqld
if [ ! -d "$DATADIR/mysql" ]; then
  [ -n "$MYSQL_ROOT_PASSWORD" ] || { echo "mysql-run: MYSQL_ROOT_PASSWORD is not set" >&2; exit 1; }
  case "$MYSQL_ROOT_PASSWORD" in *"'"*|*\\*) echo "mysql-run: MYSQL_ROOT_PASSWORD must not hold ' or \\" >&2; exit 1;; esac
  S=/usr/share/mysql
  {
    echo "create database if not exists mysql;"
    echo "use mysql;"
    echo "SET @auth_root_socket=NULL;"
    cat $S/mysql_system_tables.sql $S/mysql_performance_tables.sql $S/mysql_system_tables_data.sql $S/maria_add_gis_sp_bootstrap.sql $S/mysql_sys_schema.sql
    echo "DELETE FROM mysql.global_priv WHERE User = '';"
    echo "UPDATE mysql.global_priv SET priv = JSON_SET(priv, '\$.plugin', 'mysql_native_password', '\$.authentication_string', PASSWORD('$MYSQL_ROOT_PASSWORD')) WHERE User = 'root';"
  } | mariadbd --bootstrap --user=mysql --datadir="$DATADIR" --log-warnings=0 --enforce-storage-engine="" --max_allowed_packet=8M --net_buffer_length=16K >/dev/null
fi
exec mariadbd --user=mysql --datadir="$DATADIR"
`

// myCnf is read by the server and the clients (Debian's compiled-in path).
const myCnf = `[client-server]
socket = /run/mysqld/mysqld.sock

[mysqld]
skip-name-resolve
`

var img = slimimage.Image{
	Name:     "test mariadb image",
	Key:      "test-mariadb-" + layerVersion,
	Packages: []string{"mariadb-server-core", "mariadb-client"},
	Assemble: assemble,
}

func assemble(full string, t *slimimage.Tree) error {
	for p, links := range programs {
		if err := t.Program(p, links...); err != nil {
			return err
		}
	}
	if err := t.CopyTree("usr/share/mysql"); err != nil {
		return err
	}
	t.Applets(applets...)
	files := []struct {
		name, content string
		exec          bool
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nmysql:x:999:999:MySQL:/var/lib/mysql:/bin/false\n", false},
		{"etc/group", "root:x:0:\nmysql:x:999:\n", false},
		{"etc/nsswitch.conf", "passwd: files\ngroup: files\n", false},
		{"etc/mysql/my.cnf", myCnf, false},
		{"usr/local/bin/mysql-run", runScript, true},
	}
	for _, f := range files {
		perm := fs.FileMode(0o644)
		if f.exec {
			perm = 0o755
		}
		if err := t.WriteFile(f.name, []byte(f.content), perm); err != nil {
			return err
		}
	}
	return nil
}

// Changes are the image settings `docker import -c` gives it.
var Changes = []string{`CMD ["/usr/local/bin/mysql-run"]`}

// Tree puts the image's root filesystem into dest, from the layer cached
// in cacheDir or else built there.
func Tree(ctx context.Context, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter, dest string) error {
	return slimimage.Build(ctx, cacheDir, spec, rep, img, dest)
}

// Build makes Ref in the Docker daemon c and returns its image ID.
func Build(ctx context.Context, c client.APIClient, cacheDir string, spec rootfs.Debootstrap, rep *progress.Reporter) (string, error) {
	return slimimage.Import(ctx, c, cacheDir, spec, rep, img, Ref, Changes)
}
