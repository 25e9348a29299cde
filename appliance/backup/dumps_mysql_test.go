package backup

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/demomysql"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
)

// TestSovereignMySQLDumpsRestore: the sovereign www stack's declared MySQL
// dumps (Ghost's, Nextcloud's, Gitea's: mysqldump of the application's
// database in one transaction, with MYSQL_PWD from the container's
// MYSQL_ROOT_PASSWORD),
// taken from a real MySQL-compatible server (Debian's MariaDB 10.11; the
// stack runs the official mysql image, which no registry here serves), are
// restored by the declared restore after rows were changed, deleted and
// added, and after the database was dropped: every row and the trigger
// are back exactly; restored into a fresh deployment, its root password
// still works after a server restart.
func TestSovereignMySQLDumpsRestore(t *testing.T) {
	r, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	st, err := declarations(r, r.Deployments[0], "www")
	if err != nil {
		t.Fatal(err)
	}
	// One site's database of each application: every site renders the
	// same declaration.
	var services []*stack.Service
	for _, app := range []string{"ghost-", "nextcloud-", "gitea-"} {
		i := slices.IndexFunc(st.Services, func(s stack.Service) bool {
			return strings.HasPrefix(s.Name, app) && strings.HasSuffix(s.Name, "-mysql") && s.Backup != nil && s.Backup.Dump != nil
		})
		if i < 0 {
			t.Fatalf("the sovereign www stack declares no %s*-mysql dump", app)
		}
		services = append(services, &st.Services[i])
	}
	dk := testdocker.Start(t)
	start := time.Now()
	demomysql.Import(t, dk.Client)
	t.Logf("image built and imported in %s", time.Since(start).Round(time.Millisecond))
	for _, svc := range services {
		t.Run(svc.Name, func(t *testing.T) {
			start := time.Now()
			d := svc.Backup.Dump
			app := svc.Environment["MYSQL_DATABASE"]
			// The service's environment (the declared commands read it),
			// with this deployment's root password.
			env := func(rootPassword string) []string {
				e := []string{"MYSQL_ROOT_PASSWORD=" + rootPassword}
				for k, v := range svc.Environment {
					if k != "MYSQL_ROOT_PASSWORD" {
						e = append(e, k+"="+v)
					}
				}
				return e
			}
			s := startServer(t, dk.Client, svc.Name, &container.Config{Image: demomysql.Ref, Env: env("not-a-default-" + app)})
			s.waitReady("sh", "-c", `MYSQL_PWD="$MYSQL_ROOT_PASSWORD" exec mysqladmin -uroot ping`)
			if _, _, code := s.exec("mysql", "-uroot", "-e", "SELECT 1"); code == 0 {
				t.Fatal("root connected without the password")
			}
			sql := func(q string) string {
				t.Helper()
				return s.must("sh", "-c", `MYSQL_PWD="$MYSQL_ROOT_PASSWORD" exec mysql -uroot -N -B -e "$1"`, "sql", q)
			}
			db := "`" + app + "`"
			sql("CREATE DATABASE " + db + " CHARACTER SET utf8mb4")
			sql("CREATE TABLE " + db + ".posts (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(200), body MEDIUMTEXT, raw VARBINARY(64), at DATETIME(6)) ENGINE=InnoDB")
			sql("INSERT INTO " + db + ".posts (title, body, raw, at) VALUES ('Hello', 'first post é ✓ it''s \"quoted\"', UNHEX('00FF10'), '2026-12-03 10:00:00.123456'), ('Second', NULL, NULL, NULL)")
			sql("INSERT INTO " + db + ".posts (title, body, raw, at) SELECT CONCAT('bulk-', seq), REPEAT('x', seq), UNHEX(MD5(seq)), '2026-12-03' + INTERVAL seq SECOND FROM " + db + ".seq_1_to_500")
			sql("CREATE TRIGGER " + db + ".keep_title BEFORE UPDATE ON " + db + ".posts FOR EACH ROW SET NEW.title = NEW.title")
			rows := func() string {
				t.Helper()
				return sql("SELECT COUNT(*), SHA2(GROUP_CONCAT(CONCAT_WS('|', id, title, IFNULL(body, 'NULL'), IFNULL(HEX(raw), 'NULL'), IFNULL(at, 'NULL')) ORDER BY id SEPARATOR ';'), 256) FROM " + db + ".posts")
			}
			sql("SET GLOBAL group_concat_max_len = 1048576")
			want := rows()
			restore, plain := dumpAndRestore(t, s, d)
			if !strings.Contains(plain, "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `"+app+"`") {
				t.Errorf("the dump holds no database %s", app)
			}
			sql("UPDATE " + db + ".posts SET title = 'changed'; DELETE FROM " + db + ".posts WHERE id = 2; INSERT INTO " + db + ".posts (title) VALUES ('after the dump')")
			restore(s)
			if got := rows(); got != want {
				t.Fatalf("after the restore: %s, want %s", got, want)
			}
			sql("DROP DATABASE " + db)
			restore(s)
			if got := rows(); got != want {
				t.Fatalf("after a restore of the dropped database: %s, want %s", got, want)
			}
			if got := sql("SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = '" + app + "'"); strings.TrimSpace(got) != "1" {
				t.Errorf("the trigger is not back (%s)", got)
			}
			// Into a fresh deployment (its own root password): the rows
			// come back, and its password still lets root in after the
			// server restarts (the grant tables are read again).
			fresh := startServer(t, dk.Client, svc.Name+"-fresh", &container.Config{Image: demomysql.Ref, Env: env("the-new-deployments-456")})
			login := []string{"sh", "-c", `MYSQL_PWD="$MYSQL_ROOT_PASSWORD" exec mysql -uroot -e "SELECT 1"`}
			fresh.waitReady(login...)
			restore(fresh)
			if err := dk.Client.ContainerRestart(context.Background(), fresh.id, container.StopOptions{}); err != nil {
				t.Fatal(err)
			}
			fresh.waitReady(login...)
			if got := fresh.must("sh", "-c", `MYSQL_PWD="$MYSQL_ROOT_PASSWORD" exec mysql -uroot -N -B -e "$1"`, "sql", "SELECT COUNT(*) FROM "+db+".posts"); strings.TrimSpace(got) != "502" {
				t.Errorf("fresh deployment: %s rows, want 502", got)
			}
			t.Logf("database test in %s", time.Since(start).Round(time.Millisecond))
		})
	}
}
