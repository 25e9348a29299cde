package registry

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSingleNodeHosts(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	reg := n.reg

	before := time.Now()
	h := Host{Name: "h1", Address: "10.0.0.11:8443", State: "joining", Step: "lxd-init", Fingerprint: "aa11"}
	if err := reg.PutHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Host(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if got.UpdatedAt.Before(before.Add(-time.Second)) || got.UpdatedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("UpdatedAt = %v, want about now", got.UpdatedAt)
	}
	got.UpdatedAt = time.Time{}
	if got != h {
		t.Errorf("Host(h1) = %+v, want %+v", got, h)
	}

	if err := reg.SetHostState(ctx, "h1", "member", "done", "lxd join: timeout"); err != nil {
		t.Fatal(err)
	}
	got, _ = reg.Host(ctx, "h1")
	if got.State != "member" || got.Step != "done" || got.LastError != "lxd join: timeout" || got.Fingerprint != "aa11" {
		t.Errorf("after SetHostState: %+v", got)
	}
	if err := reg.SetHostState(ctx, "nope", "member", "", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetHostState(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := reg.Host(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Host(unknown) = %v, want ErrNotFound", err)
	}

	// The pinned certificate: same fingerprint updates, a different one is refused.
	h.State = "member"
	if err := reg.PutHost(ctx, h); err != nil {
		t.Errorf("PutHost with the pinned fingerprint: %v", err)
	}
	h2 := h
	h2.Fingerprint = "bb22"
	if err := reg.PutHost(ctx, h2); !errors.Is(err, ErrFingerprintChanged) {
		t.Errorf("PutHost with another fingerprint = %v, want ErrFingerprintChanged", err)
	}
	// Two hosts cannot share one certificate.
	if err := reg.PutHost(ctx, Host{Name: "h2", Address: "10.0.0.12:8443", State: "joining", Fingerprint: "aa11"}); err == nil {
		t.Error("a second host with h1's fingerprint was accepted")
	}
	if err := reg.PutHost(ctx, Host{Name: "h0", Address: "10.0.0.10:8443", State: "joining"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.PutHost(ctx, Host{Name: "bad"}); err == nil {
		t.Error("PutHost without address and state was accepted")
	}

	hosts, err := reg.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if names := hostNames(hosts); names != "h0,h1" {
		t.Errorf("Hosts = %s, want h0,h1", names)
	}

	// A reinstalled host: forget it, then it registers with its new certificate.
	if err := reg.DeleteHost(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	if err := reg.PutHost(ctx, h2); err != nil {
		t.Errorf("PutHost after DeleteHost: %v", err)
	}
}

func TestSingleNodeJoinAttempts(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	t0 := time.Date(2026, 11, 24, 7, 0, 0, 0, time.UTC)
	for i, a := range []JoinAttempt{
		{Host: "h2", At: t0, Result: JoinRefused, Detail: "stale timestamp"},
		{Host: "h3", At: t0.Add(time.Second), Result: JoinFailed, Detail: "lxd join: token expired"},
		{Host: "h2", At: t0.Add(2 * time.Second), Result: JoinSucceeded},
	} {
		got, err := n.reg.RecordJoinAttempt(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != int64(i+1) {
			t.Errorf("attempt %d got ID %d", i+1, got.ID)
		}
	}
	h2, err := n.reg.JoinAttempts(ctx, "h2")
	if err != nil {
		t.Fatal(err)
	}
	if len(h2) != 2 || h2[0].Result != JoinRefused || h2[0].Detail != "stale timestamp" ||
		!h2[0].At.Equal(t0) || h2[1].Result != JoinSucceeded {
		t.Errorf("JoinAttempts(h2) = %+v", h2)
	}
	all, err := n.reg.JoinAttempts(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[1].Host != "h3" {
		t.Errorf("JoinAttempts() = %+v", all)
	}
	if _, err := n.reg.RecordJoinAttempt(ctx, JoinAttempt{Host: "h4"}); err == nil {
		t.Error("an attempt without a result was accepted")
	}
}

func TestSingleNodeDeployments(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	reg := n.reg

	if _, err := reg.CurrentRevision(ctx, "www"); !errors.Is(err, ErrNotFound) {
		t.Errorf("CurrentRevision before any = %v, want ErrNotFound", err)
	}
	r1, err := reg.AddRevision(ctx, "www", "sha256:1")
	if err != nil {
		t.Fatal(err)
	}
	if r1.Revision != 1 || r1.State != RevisionPending {
		t.Errorf("first revision = %+v", r1)
	}
	// The same spec again (a re-run after a crash) is the same revision.
	again, err := reg.AddRevision(ctx, "www", "sha256:1")
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision != 1 {
		t.Errorf("re-adding the current spec made revision %d, want 1", again.Revision)
	}
	if err := reg.SetRevisionState(ctx, "www", 1, "deployed"); err != nil {
		t.Fatal(err)
	}
	r2, err := reg.AddRevision(ctx, "www", "sha256:2")
	if err != nil {
		t.Fatal(err)
	}
	if r2.Revision != 2 {
		t.Errorf("second spec got revision %d, want 2", r2.Revision)
	}
	if _, err := reg.AddRevision(ctx, "btcpay", "sha256:b"); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetRevisionState(ctx, "www", 9, "deployed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetRevisionState(unknown revision) = %v, want ErrNotFound", err)
	}

	revs, err := reg.Revisions(ctx, "www")
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 2 || revs[0].State != "deployed" || revs[1].SpecHash != "sha256:2" || revs[1].State != RevisionPending {
		t.Errorf("Revisions(www) = %+v", revs)
	}
	cur, err := reg.CurrentRevision(ctx, "www")
	if err != nil || cur.Revision != 2 {
		t.Errorf("CurrentRevision(www) = %+v, %v; want revision 2", cur, err)
	}
	deps, err := reg.Deployments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(deps) != 2 || deps[0].Deployment != "btcpay" || deps[1].Deployment != "www" || deps[1].Revision != 2 {
		t.Errorf("Deployments = %+v", deps)
	}
}

// Migrations run on every Open: a restart applies nothing twice, and a
// database written by a newer ssbuild is refused, not misread.
func TestMigrationsIdempotentAcrossRestarts(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	if err := n.reg.PutHost(ctx, Host{Name: "h1", Address: "10.0.0.11:8443", State: "member"}); err != nil {
		t.Fatal(err)
	}
	if err := n.reg.migrate(ctx); err != nil {
		t.Fatalf("migrate on a current schema: %v", err)
	}
	n.stop(t)
	n.restart(t)
	if v, err := n.reg.Version(ctx); err != nil || v != len(migrations) {
		t.Errorf("Version after restart = %d, %v; want %d", v, err, len(migrations))
	}
	var rows int
	if err := n.reg.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != len(migrations) {
		t.Errorf("schema_migrations has %d rows, want %d", rows, len(migrations))
	}
	if _, err := n.reg.Host(ctx, "h1"); err != nil {
		t.Errorf("host written before the restart: %v", err)
	}

	// A newer ssbuild migrated this database: this one must not write it.
	if _, err := n.reg.db.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	n.stop(t)
	_, err := Open(ctx, n.cfg)
	if err == nil || !strings.Contains(err.Error(), "upgrade ssbuild") {
		t.Errorf("Open on a newer schema = %v, want an error asking to upgrade ssbuild", err)
	}
}

// A node killed with SIGKILL (no Close) keeps every write it acknowledged.
func TestReopenAfterKill(t *testing.T) {
	requireDqlite(t)
	cfg := Config{Dir: filepath.Join(t.TempDir(), "node"), Address: freeAddress(t)}
	c := startChildNode(t, cfg)
	for _, name := range []string{"h1", "h2", "h3"} {
		c.putHost(t, name)
	}
	c.kill()

	n := startNode(t, cfg)
	hosts, err := n.reg.Hosts(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if names := hostNames(hosts); names != "h1,h2,h3" {
		t.Errorf("hosts after kill and reopen = %s, want h1,h2,h3", names)
	}
}

func hostNames(hosts []Host) string {
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	return strings.Join(names, ",")
}

// One holder at a time; the holder renews; an expired or released lease
// goes to the next member that asks.
func TestSingleNodeLeases(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	if _, ok, err := n.reg.AcquireLease(ctx, "deploy", "host1", time.Hour); !ok || err != nil {
		t.Fatalf("host1 takes the free lease: %v, %v", ok, err)
	}
	if l, ok, err := n.reg.AcquireLease(ctx, "deploy", "host2", time.Hour); ok || err != nil || l.Holder != "host1" {
		t.Fatalf("host2 takes host1's lease: %v, %+v, %v", ok, l, err)
	}
	if _, ok, _ := n.reg.AcquireLease(ctx, "deploy", "host1", 50*time.Millisecond); !ok {
		t.Fatal("host1 cannot renew its lease")
	}
	time.Sleep(100 * time.Millisecond)
	if l, ok, err := n.reg.AcquireLease(ctx, "deploy", "host2", time.Hour); !ok || err != nil || l.Holder != "host2" {
		t.Fatalf("host2 after host1's lease expired: %v, %+v, %v", ok, l, err)
	}
	if err := n.reg.ReleaseLease(ctx, "deploy", "host2"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := n.reg.AcquireLease(ctx, "deploy", "host3", time.Hour); !ok {
		t.Error("host3 cannot take the released lease")
	}
}
