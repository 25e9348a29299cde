package deploystate_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const (
	clusterSecret = "0123456789abcdef0123456789abcdef"
	deployment    = "demo-regtest"
)

var names = []string{"btcpay-postgres", "ghost-mysql-demo-example", "nostr-relay-admin"}

// openRegistry starts a one-node registry (real dqlite) on loopback in
// dir; it is closed when the test ends.
func openRegistry(t *testing.T, dir string) *registry.Registry {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg, err := registry.Open(ctx, registry.Config{Dir: dir, Address: addr})
	if errors.Is(err, registry.ErrNoDqlite) {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = reg.Close(ctx)
	})
	return reg
}

func store(t *testing.T, reg *registry.Registry, secret string, importDirs ...string) *deploystate.Registry {
	t.Helper()
	key, err := secrets.DeriveKey([]byte(secret), "demo")
	if err != nil {
		t.Fatal(err)
	}
	kek, err := secrets.DeriveKEK([]byte(secret), "demo")
	if err != nil {
		t.Fatal(err)
	}
	return &deploystate.Registry{Reg: reg, KEK: kek, Cluster: "demo", Legacy: key, Member: "host1", ImportDirs: importDirs, Logf: t.Logf}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// filesContain says which of the set's secrets appear in any file under dir.
func filesContain(t *testing.T, dir string, set secrets.Set) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range set.Names() {
			if v, _ := set.Get(n); bytes.Contains(data, []byte(v)) {
				found = append(found, n+" in "+filepath.Base(path))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// One set per deployment in the registry: a second Ensure (any member,
// more names) keeps every value; the registry's files hold none of them;
// another cluster secret cannot open it and generates nothing over it.
func TestRegistryKeepsOneSealedSet(t *testing.T) {
	dir := t.TempDir()
	reg := openRegistry(t, filepath.Join(dir, "registry"))
	s := store(t, reg, clusterSecret)
	first, err := s.Ensure(ctx(t), deployment, names[:2])
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Ensure(ctx(t), deployment, names)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range first.Names() {
		a, _ := first.Get(n)
		b, _ := again.Get(n)
		if a != b {
			t.Errorf("secret %s changed on the second ensure", n)
		}
	}
	if again.Len() != 3 {
		t.Errorf("the second ensure has %d secrets, want 3", again.Len())
	}
	if found := filesContain(t, dir, again); len(found) > 0 {
		t.Errorf("the registry's files hold secrets in clear: %v", found)
	}
	sealed, err := reg.SealedSecrets(ctx(t), deployment)
	if err != nil {
		t.Fatal(err)
	}

	wrong := store(t, reg, "another cluster's secret, 32 char")
	_, err = wrong.Ensure(ctx(t), deployment, append(names, "new-one"))
	if !errors.Is(err, secrets.ErrWrongKey) || !strings.Contains(err.Error(), "cluster secret") || !strings.Contains(err.Error(), deployment) {
		t.Errorf("ensure under another cluster secret: %v; want ErrWrongKey naming the deployment and the cluster secret", err)
	}
	if after, _ := reg.SealedSecrets(ctx(t), deployment); !bytes.Equal(after, sealed) {
		t.Error("a store with the wrong key changed the registry's secrets")
	}

	evs, err := reg.SecretEvents(ctx(t), deployment)
	if err != nil || len(evs) != 2 || evs[0].What != "generated" || len(evs[0].Names) != 2 || evs[1].Names[0] != names[2] {
		t.Errorf("secret events %+v, %v; want 2 generations (2 names, then %s)", evs, err, names[2])
	}

	if err := s.Rotate(ctx(t), deployment, names[0]); err != nil {
		t.Fatal(err)
	}
	rotated, _ := s.Ensure(ctx(t), deployment, names)
	a, _ := again.Get(names[0])
	b, _ := rotated.Get(names[0])
	c, _ := again.Get(names[1])
	d, _ := rotated.Get(names[1])
	if a == b || c != d {
		t.Errorf("rotating %s: it changed %v, another one changed %v", names[0], a != b, c != d)
	}
	if evs, _ := reg.SecretEvents(ctx(t), deployment); evs[len(evs)-1].What != "rotated" {
		t.Errorf("the rotation is not recorded: %+v", evs[len(evs)-1])
	}

	if err := s.Remove(ctx(t), deployment); err != nil {
		t.Fatal(err)
	}
	if has, err := s.Has(ctx(t), deployment); has || err != nil {
		t.Errorf("after Remove, Has = %v, %v", has, err)
	}
}

// Upgrade in place: files of an older ssbuild (the first-boot deploy's and
// `ssbuild deploy`'s, with one value differing) go into the registry, the
// first file's value winning, and are removed; the values are then the
// registry's for every later ensure.
func TestImportOlderFiles(t *testing.T) {
	dir := t.TempDir()
	serviceDir, cliDir := filepath.Join(dir, "state", "deploy"), filepath.Join(dir, "deployments")
	old, err := secrets.Ensure(serviceDir, deployment, names[:2])
	if err != nil {
		t.Fatal(err)
	}
	cliOld, err := secrets.Ensure(cliDir, deployment, names) // a second set, as the bug made
	if err != nil {
		t.Fatal(err)
	}
	reg := openRegistry(t, filepath.Join(dir, "registry"))
	s := store(t, reg, clusterSecret, serviceDir)
	if has, _ := s.Has(ctx(t), deployment); !has {
		t.Error("Has does not count a file still to import")
	}
	if err := s.ImportAll(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(secrets.File(serviceDir, deployment)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the service's file is still there after the import: %v", err)
	}

	// The CLI's file, through the socket as `ssbuild deploy` hands it over.
	sock := serve(t, s)
	client := &deploystate.Client{Socket: sock, ImportDir: cliDir}
	got, err := client.Ensure(ctx(t), deployment, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(secrets.File(cliDir, deployment)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the CLI's file is still there after the import: %v", err)
	}
	for _, n := range names[:2] {
		want, _ := old.Get(n)
		if v, _ := got.Get(n); v != want {
			t.Errorf("%s: not the first-boot file's value", n)
		}
	}
	want, _ := cliOld.Get(names[2])
	if v, _ := got.Get(names[2]); v != want {
		t.Errorf("%s (only in the CLI's file): not its value", names[2])
	}
	evs, _ := reg.SecretEvents(ctx(t), deployment)
	if len(evs) != 2 || evs[0].What != "imported" || evs[1].What != "imported" {
		t.Errorf("events %+v; want two imports", evs)
	}
	if found := filesContain(t, filepath.Join(dir, "registry"), got); len(found) > 0 {
		t.Errorf("the registry's files hold secrets in clear: %v", found)
	}
}

// serve runs the store's endpoints on a unix socket, as the service does.
func serve(t *testing.T, s *deploystate.Registry) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "service.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	s.Register(mux)
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// A cluster member's CLI whose service does not answer stops, saying why,
// and writes no secret anywhere.
func TestClientWithoutServiceGeneratesNothing(t *testing.T) {
	dir := t.TempDir()
	c := &deploystate.Client{Socket: filepath.Join(dir, "service.sock"), ImportDir: filepath.Join(dir, "deployments")}
	_, err := c.Ensure(ctx(t), deployment, names)
	if err == nil || !strings.Contains(err.Error(), "registry is not reachable") || !strings.Contains(err.Error(), c.Socket) {
		t.Errorf("ensure without a service: %v; want it to name the registry and the socket", err)
	}
	if _, err := c.StartDeploy(ctx(t), registry.DeployStart{Deployment: deployment, SpecHash: "x"}); err == nil {
		t.Error("a deploy start was recorded without a service")
	}
	if entries, _ := os.ReadDir(c.ImportDir); len(entries) != 0 {
		t.Errorf("files written without a registry: %v", entries)
	}
}

// Revisions through the socket: a new one per recipe, the same one for a
// re-run, each with its member, times, mutations and outcome.
func TestRevisionsThroughTheSocket(t *testing.T) {
	reg := openRegistry(t, filepath.Join(t.TempDir(), "registry"))
	c := &deploystate.Client{Socket: serve(t, store(t, reg, clusterSecret))}
	run := func(digest, member string, mutations int, failure string) registry.Revision {
		rev, err := c.StartDeploy(ctx(t), registry.DeployStart{Deployment: deployment, SpecHash: digest, Recipe: "recipe " + digest, Member: member})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.EndDeploy(ctx(t), deployment, rev.Revision, mutations, failure); err != nil {
			t.Fatal(err)
		}
		return rev
	}
	run("sha256:a", "host1", 12, "")
	run("sha256:b", "host2", 3, "www: services: boom")
	if rev := run("sha256:b", "host3", 1, ""); rev.Revision != 2 {
		t.Errorf("a re-run of the same recipe made revision %d, want 2", rev.Revision)
	}
	revs, err := c.History(ctx(t), deployment)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 2 {
		t.Fatalf("%d revisions, want 2: %+v", len(revs), revs)
	}
	r1, r2 := revs[0], revs[1]
	if r1.State != registry.RevisionDeployed || r1.Member != "host1" || r1.Mutations != 12 || r1.Recipe != "recipe sha256:a" ||
		r1.StartedAt.IsZero() || r1.EndedAt.Before(r1.StartedAt) {
		t.Errorf("revision 1: %+v", r1)
	}
	if r2.State != registry.RevisionDeployed || r2.Member != "host3" || r2.Error != "" {
		t.Errorf("revision 2 after its successful re-run: %+v", r2)
	}
}

// A standalone LXD's folder keeps the revisions too.
func TestFolderRevisions(t *testing.T) {
	f := deploystate.Folder{Dir: secrets.Dir(t.TempDir())}
	for i, digest := range []string{"sha256:a", "sha256:a", "sha256:b"} {
		rev, err := f.StartDeploy(ctx(t), registry.DeployStart{Deployment: deployment, SpecHash: digest, Recipe: digest, Member: "laptop"})
		if err != nil {
			t.Fatal(err)
		}
		failure := ""
		if i == 2 {
			failure = "www: boom"
		}
		if err := f.EndDeploy(ctx(t), deployment, rev.Revision, i, failure); err != nil {
			t.Fatal(err)
		}
	}
	revs, err := f.History(ctx(t), deployment)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 2 || revs[0].State != registry.RevisionDeployed || revs[0].Mutations != 1 ||
		revs[1].State != registry.RevisionFailed || revs[1].Error != "www: boom" || revs[1].Recipe != "sha256:b" {
		t.Errorf("folder revisions: %+v", revs)
	}
	if fi, err := os.Stat(filepath.Join(string(f.Dir), deployment+".revisions.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the revisions file: %v, %v; want 0600", fi, err)
	}
}

// Rotating one secret through the socket (as `ssbuild rotate-secret` on a
// member does) or in a standalone folder changes that one value only.
func TestRotateOneSecret(t *testing.T) {
	reg := openRegistry(t, filepath.Join(t.TempDir(), "registry"))
	for what, s := range map[string]deploystate.Store{
		"registry": &deploystate.Client{Socket: serve(t, store(t, reg, clusterSecret))},
		"folder":   deploystate.Folder{Dir: secrets.Dir(t.TempDir())},
	} {
		before, err := s.Ensure(ctx(t), deployment, names)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Rotate(ctx(t), deployment, names[1]); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		after, err := s.Ensure(ctx(t), deployment, names)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			a, _ := before.Get(n)
			b, _ := after.Get(n)
			if (a != b) != (n == names[1]) {
				t.Errorf("%s: after rotating %s, %s changed: %v", what, names[1], n, a != b)
			}
		}
		if err := s.Rotate(ctx(t), deployment, "no-such-secret"); err == nil || !strings.Contains(err.Error(), "no-such-secret") {
			t.Errorf("%s: rotating an unknown secret: %v", what, err)
		}
	}
	if evs, _ := reg.SecretEvents(ctx(t), deployment); len(evs) != 2 || evs[1].What != "rotated" || evs[1].Names[0] != names[1] {
		t.Errorf("registry events %+v; want the generation and the rotation of %s", evs, names[1])
	}
}

// The Lightning generation moves one step from the value read, through the
// socket (a member's CLI) as in a standalone folder; a stale bump is refused.
func TestLightningGeneration(t *testing.T) {
	reg := openRegistry(t, filepath.Join(t.TempDir(), "registry"))
	for what, s := range map[string]deploystate.Store{
		"registry": &deploystate.Client{Socket: serve(t, store(t, reg, clusterSecret))},
		"folder":   deploystate.Folder{Dir: secrets.Dir(t.TempDir())},
	} {
		if g, err := s.LightningGeneration(ctx(t), deployment+"/btcpay"); err != nil || g != 0 {
			t.Fatalf("%s: generation before any: %d, %v", what, g, err)
		}
		if g, err := s.BumpLightning(ctx(t), deployment+"/btcpay", 0, "first start"); err != nil || g != 1 {
			t.Fatalf("%s: first bump: %d, %v", what, g, err)
		}
		if _, err := s.BumpLightning(ctx(t), deployment+"/btcpay", 0, "stale"); err == nil || !strings.Contains(err.Error(), "it is 1, not 0") {
			t.Errorf("%s: a stale bump: %v; want it refused", what, err)
		}
		if g, err := s.LightningGeneration(ctx(t), deployment+"/btcpay"); err != nil || g != 1 {
			t.Errorf("%s: generation: %d, %v; want 1", what, g, err)
		}
		// What moved it is kept for the refusal of an older copy: the
		// reason and the day, and on a cluster the member.
		day := time.Now().UTC().Format("2006-01-02")
		by, err := s.LightningMovedBy(ctx(t), deployment+"/btcpay")
		if err != nil || !strings.HasSuffix(by, "UTC: first start") || !strings.Contains(by, "at "+day) || (what == "registry") != strings.HasPrefix(by, "on ") {
			t.Errorf("%s: moved by %q, %v; want the first start, today, the member on a cluster", what, by, err)
		}
		if by, err := s.LightningMovedBy(ctx(t), deployment+"/clams"); err != nil || by != "" {
			t.Errorf("%s: a node never started: moved by %q, %v; want none", what, by, err)
		}
	}
}

// A deployment's last restore test is kept through the socket (the
// registry, recording the service's member) as in a standalone folder:
// none before, the newest after.
func TestRestoreTestRecord(t *testing.T) {
	reg := openRegistry(t, filepath.Join(t.TempDir(), "registry"))
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for what, s := range map[string]deploystate.Store{
		"registry": &deploystate.Client{Socket: serve(t, store(t, reg, clusterSecret))},
		"folder":   deploystate.Folder{Dir: secrets.Dir(t.TempDir())},
	} {
		if rt, err := s.LastRestoreTest(ctx(t), deployment); err != nil || rt != nil {
			t.Fatalf("%s: restore test before any: %+v, %v", what, rt, err)
		}
		one := registry.RestoreTest{Deployment: deployment, Backup: "backups/2026-12-03T090000Z", Taken: at.Add(-3 * time.Hour),
			Started: at, Ended: at.Add(41 * time.Second)}
		two := one
		two.Ended, two.Error = at.Add(time.Minute), "verify: backup: chunks/ab/ab12.age: sha256"
		for _, rt := range []registry.RestoreTest{one, two} {
			if err := s.RecordRestoreTest(ctx(t), rt); err != nil {
				t.Fatalf("%s: record: %v", what, err)
			}
		}
		rt, err := s.LastRestoreTest(ctx(t), deployment)
		if what == "registry" {
			two.Member = "host1"
		}
		if err != nil || rt == nil || *rt != two {
			t.Errorf("%s: last restore test %+v, %v; want %+v", what, rt, err, two)
		}
	}
}

// A lease is one holder's at a time, on a cluster (through the socket) as
// in a state folder: another is told who holds it; HoldLease renews it
// past its time while the work runs, gives it up after, and ends the
// work's context when another took it meanwhile.
func TestLeases(t *testing.T) {
	reg := openRegistry(t, filepath.Join(t.TempDir(), "registry"))
	const name = "restore-test:" + deployment
	for what, s := range map[string]deploystate.Store{
		"registry": &deploystate.Client{Socket: serve(t, store(t, reg, clusterSecret))},
		"folder":   deploystate.Folder{Dir: secrets.Dir(t.TempDir())},
	} {
		if _, ok, err := s.AcquireLease(ctx(t), name, "host1 pid 10", time.Minute); err != nil || !ok {
			t.Fatalf("%s: a free lease: %v, %v", what, ok, err)
		}
		if l, ok, err := s.AcquireLease(ctx(t), name, "host2 pid 20", time.Minute); err != nil || ok || l.Holder != "host1 pid 10" {
			t.Fatalf("%s: a held lease taken by another: %+v, %v, %v; want it refused, naming its holder", what, l, ok, err)
		}
		if err := s.ReleaseLease(ctx(t), name, "host2 pid 20"); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.AcquireLease(ctx(t), name, "host2 pid 20", time.Minute); ok {
			t.Fatalf("%s: another's release freed the lease", what)
		}
		if err := s.ReleaseLease(ctx(t), name, "host1 pid 10"); err != nil {
			t.Fatal(err)
		}

		const ttl = 600 * time.Millisecond
		held, release, err := deploystate.HoldLease(ctx(t), s, name, "host1 pid 10", ttl)
		if err != nil {
			t.Fatalf("%s: hold: %v", what, err)
		}
		time.Sleep(3 * ttl) // renewed meanwhile, or it would have expired
		var he *deploystate.HeldError
		if _, _, err := deploystate.HoldLease(ctx(t), s, name, "host2 pid 20", ttl); !errors.As(err, &he) || he.Holder != "host1 pid 10" ||
			!strings.Contains(err.Error(), "host1 pid 10 holds the lease "+name) {
			t.Fatalf("%s: a second hold after 3 lease times: %v; want it refused, naming the holder", what, err)
		}
		if held.Err() != nil {
			t.Fatalf("%s: the holder's work was stopped: %v", what, context.Cause(held))
		}
		release()
		if _, ok, err := s.AcquireLease(ctx(t), name, "host2 pid 20", ttl); err != nil || !ok {
			t.Fatalf("%s: after release: %v, %v; want the lease free", what, ok, err)
		}

		// Lost: the store gave it to another (as after it expired
		// unrenewed); the holder's work is stopped at its next renewal.
		held, release, err = deploystate.HoldLease(ctx(t), s, name+"-lost", "host1 pid 10", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseLease(ctx(t), name+"-lost", "host1 pid 10"); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := s.AcquireLease(ctx(t), name+"-lost", "host3 pid 30", time.Minute); err != nil || !ok {
			t.Fatal(ok, err)
		}
		select {
		case <-held.Done():
			if cause := context.Cause(held); !strings.Contains(cause.Error(), "lost") || !strings.Contains(cause.Error(), "host3 pid 30") {
				t.Errorf("%s: stopped by %v; want the lease lost to host3", what, cause)
			}
		case <-time.After(10 * ttl):
			t.Errorf("%s: the work goes on after its lease was taken by another", what)
		}
		release()
		if l, ok, _ := s.AcquireLease(ctx(t), name+"-lost", "host1 pid 10", ttl); ok || l.Holder != "host3 pid 30" {
			t.Errorf("%s: the release of a lost lease freed another's: %+v", what, l)
		}
	}
}
