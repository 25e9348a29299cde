package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/testkit/clustertest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// checkFreshRestore is issue 16's disaster recovery (a subtest of
// TestDeployDemoOnThreeHosts, last: it purges the deployment): a row
// written through the demo's PostgreSQL and files in data volumes are
// backed up, the deployment is purged (project, volumes and secrets,
// with them its backup key), then the same recipe is deployed on a
// freshly formed one-member cluster (its own, new secrets) and the backup
// restored there with the signer key `backup` printed: the row and the
// files are back, the sites answer through the new cluster's www, and the
// Lightning node runs with a generation in the new cluster's state.
// Without the signer the restore is refused and changes nothing: the new
// cluster holds no backup key of the deployment. The next backup is
// signed by the new cluster's own key.
func checkFreshRestore(t *testing.T, ctx context.Context, bed *testbed.Bed, o deploy.Options, project string) {
	subStart := time.Now()
	ids := ownerKey(t, o)
	d := o.Recipe.Deployments[0]
	const row = "row for a fresh cluster"
	psqlIn(t, o, project, "INSERT INTO pages (body) VALUES ('"+row+"') ON CONFLICT DO NOTHING")
	dockerExec(t, o, project, "btcpay", project+"-btcpay", "sh", "-c", "echo from-the-old-cluster > /data/fresh-marker")
	// The node's seed: what a restore must carry over to recover its funds.
	dockerExec(t, o, project, "btcpay", project+"-lightning", "sh", "-c", "echo seed-of-the-old-node > /root/.lightning/regtest/hsm_secret")
	dir := filepath.Join(t.TempDir(), "backup")
	m, err := backup.Run(ctx, backup.Options{FilesCache: t.TempDir(), LXD: o.LXD, Recipe: o.Recipe, Deployment: d.Name, To: dir, State: stateOf(o)})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}

	// `ssbuild down --purge`: the deployment and its secrets are gone.
	if _, err := deploy.Down(ctx, o, d, true); err != nil {
		t.Fatalf("down --purge: %v", err)
	}
	if _, _, err := o.LXD.GetProject(project); err == nil {
		t.Error("the project is still there after down --purge")
	}
	if _, err := os.Stat(secrets.File(o.StateDir, project)); err == nil {
		t.Error("the secrets file is still there after down --purge")
	}
	if left, _ := deploy.Doomed(ctx, o, d); len(left) != 0 {
		t.Errorf("left after down --purge: %v", left)
	}
	// The old cluster has done its part; its daemons would only compete
	// with the new one for the machine's two cores.
	if err := bed.Close(); err != nil {
		t.Errorf("close the three-host bed: %v", err)
	}

	// A freshly formed cluster of one member, the same recipe deployed on
	// it: another cluster, so new secrets and no backup key.
	start := time.Now()
	fresh := testbed.New(t, testbed.Options{Hosts: 1})
	clustertest.Form(t, fresh)
	formed := time.Since(start)
	fo := o
	fo.LXD, fo.StateDir, fo.State = fresh.Hosts[0].LXD(), t.TempDir(), nil
	start = time.Now()
	if _, err := deploy.Deploy(ctx, fo); err != nil {
		t.Fatalf("deploy on the fresh cluster: %v", err)
	}
	deployed := time.Since(start)
	h := fresh.Hosts[0]
	// One member: the site is asked from the host itself, at its address.
	www := endpoint{host: h, addr: h.Address.String(), client: h}
	state := stateOf(fo)
	node := fence.NodeName(project, "btcpay")
	gen0, err := state.LightningGeneration(ctx, node)
	if err != nil || gen0 < 1 {
		t.Fatalf("the fresh deployment's Lightning generation: %d, %v; want one recorded at its first start", gen0, err)
	}
	// The deploy returns with the services started; the stand-in makes
	// its table once PostgreSQL is up.
	var up error
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		var code int
		_, _, code, up = lxdexec.Run(fo.LXD.UseProject(project), "btcpay", "docker", "exec", project+"-btcpay", "psql", "-tA", "-c", "SELECT count(*) FROM pages")
		if up == nil && code == 0 {
			break
		} else if up == nil {
			up = fmt.Errorf("psql exited %d", code)
		}
	}
	if up != nil {
		t.Fatalf("the fresh deployment's database: %v", up)
	}
	count := func() string {
		return psqlIn(t, fo, project, "SELECT count(*) FROM pages WHERE body = '"+row+"'")
	}
	if got := count(); got != "0" {
		t.Fatalf("the fresh deployment already holds the row (%s)", got)
	}

	// No signer, and the new cluster holds no backup key of the
	// deployment: refused, nothing changed.
	err = backup.Restore(ctx, backup.RestoreOptions{LXD: fo.LXD, Recipe: fo.Recipe, Deployment: d.Name, From: dir, Identities: ids, State: state})
	if err == nil || !strings.Contains(err.Error(), "holds no backup key") || !strings.Contains(err.Error(), "--signer") {
		t.Errorf("restore into the fresh cluster without --signer: %v; want a refusal naming --signer", err)
	}
	if got := count(); got != "0" {
		t.Errorf("a refused restore put the row back (%s)", got)
	}
	if g, err := state.LightningGeneration(ctx, node); err != nil || g != gen0 {
		t.Errorf("a refused restore moved the Lightning generation %d -> %d (%v)", gen0, g, err)
	}

	// `ssbuild restore --signer KEY`, the key `backup` printed.
	start = time.Now()
	if err := backup.Restore(ctx, backup.RestoreOptions{LXD: fo.LXD, Recipe: fo.Recipe, Deployment: d.Name, From: dir, Identities: ids,
		Signer: m.Signer, State: state, Progress: fo.Progress}); err != nil {
		t.Fatalf("restore into the fresh cluster: %v", err)
	}
	restored := time.Since(start)
	if got := count(); got != "1" {
		t.Errorf("the row written before the backup, after the restore into the fresh cluster: %s rows, want 1", got)
	}
	if got := dockerExec(t, fo, project, "btcpay", project+"-btcpay", "cat", "/data/fresh-marker"); got != "from-the-old-cluster" {
		t.Errorf("btcpay's /data/fresh-marker after the restore: %q", got)
	}
	// Written on the old cluster before its down (TestDeployDemoOnThreeHosts).
	if got := dockerExec(t, fo, project, "www", project+"-ghost-blog-example", "cat", "/data/marker"); got != "kept" {
		t.Errorf("ghost-blog-example's /data/marker after the restore: %q, want %q", got, "kept")
	}
	for host, want := range map[string]string{"btcpay.demo.example": "btcpay demo.example", "demo.example": "ghost demo.example"} {
		if got := httpGet(t, ctx, www, host); got != want {
			t.Errorf("%s through the fresh cluster's www after the restore: %q, want %q", host, got, want)
		}
	}
	gen, err := state.LightningGeneration(ctx, node)
	if err != nil || gen <= gen0 {
		t.Errorf("the restored node's generation in the fresh cluster's state: %d (%v); want more than the deploy's %d", gen, err, gen0)
	}
	if got := dockerExec(t, fo, project, "btcpay", project+"-lightning", "cat", "/root/.lightning/.ssbuild-fence"); !strings.Contains(got, fmt.Sprintf(`"generation":%d`, gen)) {
		t.Errorf("the restored node's fence file holds %q; want generation %d", got, gen)
	}
	if got := strings.TrimSpace(execIn(t, fo, project, "btcpay", "docker", "inspect", "-f", "{{.State.Running}}", project+"-lightning")); got != "true" {
		t.Errorf("the restored Lightning node is not running (running: %s)", got)
	}
	if got := dockerExec(t, fo, project, "btcpay", project+"-lightning", "cat", "/root/.lightning/regtest/hsm_secret"); got != "seed-of-the-old-node" {
		t.Errorf("the restored node's hsm_secret: %q", got)
	}
	// The fresh deploy's node had its own seed and channel database: both
	// set aside (renamed, not deleted), so the restored seed starts with no
	// channel database of another seed (Core Lightning would not start).
	aside := strings.Split(dockerExec(t, fo, project, "btcpay", project+"-lightning", "/bin/sh", "-c",
		"cd /root/.lightning/regtest && for f in hsm_secret.set-aside-* lightningd.sqlite3.set-aside-*; do echo \"$f\"; cat \"$f\"; done"), "\n")
	if len(aside) < 4 || !strings.HasPrefix(aside[0], "hsm_secret.set-aside-") || aside[1] != "stand-in hsm_secret" ||
		!strings.HasPrefix(aside[2], "lightningd.sqlite3.set-aside-") || !strings.HasPrefix(aside[3], "channel state from a start") {
		t.Errorf("the fresh node's seed and channel database set aside: %q; want hsm_secret.set-aside-* (its stand-in seed) and lightningd.sqlite3.set-aside-*", aside)
	}
	if got := dockerExec(t, fo, project, "btcpay", project+"-lightning", "cat", "/root/.lightning/regtest/lightningd.sqlite3"); strings.Count(got, "channel state from a start") != 1 {
		t.Errorf("the restored node's channel database: %q; want a new one, from its one start after the restore", got)
	}
	// The next backup, into the same folder, is the new cluster's: signed
	// and named by its own new key, so a full one, and it holds the row.
	m2, err := backup.Run(ctx, backup.Options{FilesCache: t.TempDir(), LXD: fo.LXD, Recipe: fo.Recipe, Deployment: d.Name, To: dir, State: state})
	if err != nil {
		t.Fatalf("backup on the fresh cluster into the same folder: %v", err)
	}
	if m2.Signer == m.Signer || m2.Stats.Reused != 0 {
		t.Errorf("the fresh cluster's first backup: signer changed %v, %+v; want a new signer and no chunk reused", m2.Signer != m.Signer, m2.Stats)
	}
	var sql bytes.Buffer
	if err := backup.Decrypt(filepath.Join(dir, "backups", m2.Name), "btcpay/btcpay-db/btcpay-db.sql.age", ids, &sql); err != nil || !strings.Contains(sql.String(), row) {
		t.Errorf("the fresh cluster's backup's dump lacks the restored row (%v)", err)
	}
	t.Logf("restore into a fresh cluster: bed started and formed %s, deploy %s, restore %s (Lightning generation %d -> %d), subtest %s",
		formed.Round(time.Millisecond), deployed.Round(time.Millisecond), restored.Round(time.Millisecond), gen0, gen, time.Since(subStart).Round(time.Millisecond))
}
