package backup

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/demopg"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
)

// declaredDump is the rendered sovereign stack's dump declaration of the
// service svc of instance role: the commands a backup runs, not retyped.
func declaredDump(t *testing.T, role, svc string) *stack.Dump {
	t.Helper()
	r, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	st, err := declarations(r, r.Deployments[0], role)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		if s.Name == svc && s.Backup != nil && s.Backup.Dump != nil {
			return s.Backup.Dump
		}
	}
	t.Fatalf("the sovereign %s stack declares no dump for %s", role, svc)
	return nil
}

// dbServer is a database container the test started.
type dbServer struct {
	t  *testing.T
	c  client.APIClient
	id string
}

func startServer(t *testing.T, c client.APIClient, name string, cfg *container.Config) *dbServer {
	t.Helper()
	ctx := context.Background()
	created, err := c.ContainerCreate(ctx, cfg, &container.HostConfig{NetworkMode: "none", Init: ptr(true)}, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true}) })
	if err := c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return &dbServer{t: t, c: c, id: created.ID}
}

// exec runs cmd in the container, returning stdout, stderr and the exit code.
func (s *dbServer) exec(cmd ...string) (string, string, int) {
	s.t.Helper()
	return s.execInput(nil, cmd...)
}

// execInput is exec with stdin (when not nil) fed to cmd.
func (s *dbServer) execInput(stdin []byte, cmd ...string) (string, string, int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ex, err := s.c.ContainerExecCreate(ctx, s.id, container.ExecOptions{Cmd: cmd, AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true})
	if err != nil {
		s.t.Fatal(err)
	}
	att, err := s.c.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	defer att.Close()
	if stdin != nil {
		go func() {
			att.Conn.Write(stdin)
			att.CloseWrite()
		}()
	}
	var out, errb bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errb, att.Reader); err != nil {
		s.t.Fatal(err)
	}
	insp, err := s.c.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		s.t.Fatal(err)
	}
	return out.String(), errb.String(), insp.ExitCode
}

// must runs cmd and fails the test unless it exits 0.
func (s *dbServer) must(cmd ...string) string {
	s.t.Helper()
	out, errOut, code := s.exec(cmd...)
	if code != 0 {
		s.t.Fatalf("%s: exit %d: %s", strings.Join(cmd, " "), code, errOut)
	}
	return out
}

// waitReady retries cmd until it exits 0, with the server's log on failure.
func (s *dbServer) waitReady(cmd ...string) {
	s.t.Helper()
	var errOut string
	for range 120 {
		var code int
		if _, errOut, code = s.exec(cmd...); code == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	logs, _ := s.c.ContainerLogs(context.Background(), s.id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	var b bytes.Buffer
	if logs != nil {
		stdcopy.StdCopy(&b, &b, logs)
	}
	s.t.Fatalf("the database did not become ready: %s\n%s", errOut, b.String())
}

// dumpAndRestore takes the declared dump into an encrypted backup folder
// as `ssbuild backup` does (execDump) and returns a function restoring it
// into a server as `ssbuild restore` does (restoreDump), with the dump's
// plain text.
func dumpAndRestore(t *testing.T, s *dbServer, d *stack.Dump) (restore func(to *dbServer), plainDump string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	w, err := NewWriter(dir, Manifest{Deployment: "d", Project: "d", Created: time.Now().UTC(), Recipients: []string{id.Recipient().String()}},
		testKeys(t, "deployment secret"), []age.Recipient{id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	it := Item{Kind: "dump", Instance: "i", Service: "db", File: "i/db/" + d.File + ".age"}
	start := time.Now()
	if err := w.Add(it, func(out io.Writer) error { return execDump(ctx, s.c, s.id, d.Command, out) }); err != nil {
		w.Abort()
		t.Fatalf("declared dump %q: %v", d.Command, err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("dump (%s) taken in %s", strings.Join(d.Command, " "), time.Since(start).Round(time.Millisecond))
	var plain bytes.Buffer
	if err := Decrypt(dir, it.File, []age.Identity{id}, &plain); err != nil {
		t.Fatal(err)
	}
	return func(to *dbServer) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		if err := restoreDump(ctx, to.c, to.id, d, dir, []age.Identity{id}, it); err != nil {
			t.Fatalf("declared restore %q: %v", d.Restore, err)
		}
		t.Logf("restore (%s) in %s", strings.Join(d.Restore, " "), time.Since(start).Round(time.Millisecond))
	}, plain.String()
}

// TestSovereignPostgresDumpRestores: the sovereign btcpay stack's declared
// PostgreSQL dump (pg_dumpall --clean --if-exists), taken from a real
// PostgreSQL 15 (Debian's, the demo image) holding BTCPay's and
// NBXplorer's databases, is restored by the declared restore after rows
// were changed, deleted and a database dropped, with a client connected as
// BTCPay is: every row is back exactly, a second restore of the same dump
// changes nothing, and restored into a fresh deployment the new password
// still lets its clients in.
func TestSovereignPostgresDumpRestores(t *testing.T) {
	d := declaredDump(t, "btcpay", "postgres")
	dk := testdocker.Start(t)
	start := time.Now()
	demopg.Import(t, dk.Client)
	t.Logf("image built and imported in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	// libpq's default socket directory is the official image's; the demo
	// image's server listens in /tmp, so the declared commands (run in the
	// container, as in the stack) find it through PGHOST.
	s := startServer(t, dk.Client, "sovereign-postgres", &container.Config{Image: demopg.Ref,
		Env: []string{"POSTGRES_PASSWORD=not-a-default-123", "PGHOST=/tmp"}})
	s.waitReady("pg_isready", "-U", "postgres")
	psql := func(db, sql string) string {
		return s.must("psql", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql)
	}
	dbs := []string{"btcpayservermainnet", "nbxplorermainnet"}
	for _, db := range dbs {
		psql("postgres", "CREATE DATABASE "+db)
	}
	psql("btcpayservermainnet", `CREATE TABLE "Invoices" ("Id" text PRIMARY KEY, "Amount" numeric, "Blob" bytea);
INSERT INTO "Invoices" VALUES ('inv-1', 0.00021, '\x00ff10'), ('inv-2', 12.5, NULL), ('inv-''3', 1e-8, '\x');`)
	psql("nbxplorermainnet", `CREATE TABLE txs (tx_id text PRIMARY KEY, seen timestamptz, raw bytea);
INSERT INTO txs SELECT 'tx-' || i, timestamptz '2026-12-03 10:00:00+00' + i * interval '1 minute', decode(md5(i::text), 'hex') FROM generate_series(1, 500) i;`)
	rows := func() string {
		return psql("btcpayservermainnet", `SELECT "Id", "Amount", encode("Blob", 'hex') FROM "Invoices" ORDER BY 1`) +
			psql("nbxplorermainnet", `SELECT count(*), string_agg(tx_id || seen || encode(raw, 'hex'), ',' ORDER BY tx_id) FROM txs`)
	}
	want := rows()
	restore, plain := dumpAndRestore(t, s, d)
	for _, db := range dbs {
		if !strings.Contains(plain, "\\connect "+db) {
			t.Errorf("the dump holds no database %s", db)
		}
	}

	// What a failed upgrade or a mistake leaves: rows changed, deleted,
	// added, and one database gone.
	psql("btcpayservermainnet", `UPDATE "Invoices" SET "Amount" = 0; DELETE FROM "Invoices" WHERE "Id" = 'inv-2'; INSERT INTO "Invoices" VALUES ('inv-new', 1, NULL); CREATE TABLE later (x int)`)
	psql("postgres", "DROP DATABASE nbxplorermainnet")
	// BTCPay stays connected while a restore runs.
	held := make(chan struct{})
	go func() {
		defer close(held)
		s.exec("psql", "-U", "postgres", "-d", "btcpayservermainnet", "-c", "SELECT pg_sleep(120)")
	}()
	s.waitReady("psql", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1 / (count(*) = 1)::int FROM pg_stat_activity WHERE datname = 'btcpayservermainnet'")
	restore(s)
	<-held
	if got := rows(); got != want {
		t.Fatalf("after the restore the rows are\n%s\nwant\n%s", got, want)
	}
	if got := psql("btcpayservermainnet", "SELECT count(*) FROM pg_tables WHERE tablename = 'later'"); strings.TrimSpace(got) != "0" {
		t.Errorf("a table made after the dump survived the restore (%s)", got)
	}
	// --clean --if-exists: the same dump replays over what it restored.
	restore(s)
	if got := rows(); got != want {
		t.Fatalf("after a second restore the rows are\n%s\nwant\n%s", got, want)
	}
	// The restore stops at its first error; it reports none.
	_, msgs, code := s.execInput([]byte(plain), d.Restore...)
	if code != 0 || strings.Contains(msgs, "ERROR") {
		t.Fatalf("declared restore: exit %d: %s", code, msgs)
	}
	again, _, code := s.exec(d.Command...)
	if code != 0 || unrestricted(again) != unrestricted(plain) {
		t.Errorf("a dump after the restores differs from the first (exit %d): %s", code, firstDiff(unrestricted(plain), unrestricted(again)))
	}
	// Into a fresh deployment (its own new password, as BTCPay and
	// NBXplorer are given): the rows come back and the new password
	// still lets them in over TCP.
	fresh := startServer(t, dk.Client, "sovereign-postgres-fresh", &container.Config{Image: demopg.Ref,
		Env: []string{"POSTGRES_PASSWORD=the-new-deployments-456", "PGHOST=/tmp"}})
	fresh.waitReady("pg_isready", "-U", "postgres")
	restore(fresh)
	if _, msg, code := fresh.exec("sh", "-c", "PGPASSWORD=the-new-deployments-456 exec psql -h 127.0.0.1 -U postgres -d btcpayservermainnet -w -c 'SELECT 1'"); code != 0 {
		t.Errorf("after a restore into a fresh deployment its password is refused: %s", msg)
	}
	if got := fresh.must("psql", "-U", "postgres", "-d", "nbxplorermainnet", "-tA", "-c", "SELECT count(*) FROM txs"); strings.TrimSpace(got) != "500" {
		t.Errorf("fresh deployment: %s rows, want 500", got)
	}
	t.Logf("database test in %s", time.Since(start).Round(time.Millisecond))
}

// unrestricted drops pg_dump's \restrict and \unrestrict lines, whose key
// is new in every dump.
func unrestricted(dump string) string {
	lines := strings.Split(dump, "\n")
	return strings.Join(slices.DeleteFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, "\\restrict ") || strings.HasPrefix(l, "\\unrestrict ")
	}), "\n")
}

// firstDiff shows where two texts first differ.
func firstDiff(want, got string) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	from := max(0, i-80)
	return fmt.Sprintf("at byte %d:\n  want: %q\n  got:  %q", i, want[from:min(len(want), i+80)], got[from:min(len(got), i+80)])
}

func ptr[T any](v T) *T { return &v }
