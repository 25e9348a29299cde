package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// checkMigrate is issue 16's migrate on the deployed demo (a subtest of
// TestDeployDemoOnThreeHosts): an unknown member or instance is refused
// and nothing moves; the btcpay instance moved to the member running
// neither instance answers through www with its database's rows, its
// Lightning node runs there with its channel database and a new
// generation.
func checkMigrate(t *testing.T, ctx context.Context, bed *testbed.Bed, o deploy.Options, project string) {
	name := o.Recipe.Deployments[0].Name
	pc := o.LXD.UseProject(project)
	where := func(instance string) string {
		in, _, err := pc.GetInstance(instance)
		if err != nil {
			t.Fatal(err)
		}
		return in.Location
	}
	from, wwwAt := where("btcpay"), where("www")
	to := ""
	for _, h := range bed.Hosts {
		if h.Name != from && h.Name != wwwAt {
			to = h.Name
		}
	}
	for _, c := range []struct{ instance, member, want string }{
		{"btcpay", "nosuch", "nosuch is not a member of this cluster"},
		{"nope", to, "has no instance nope (it has: btcpay, www)"},
	} {
		_, err := deploy.Migrate(ctx, o, name, c.instance, c.member)
		if !errors.Is(err, deploy.ErrMigrateRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("migrate %s to %s: %v; want it refused: %q", c.instance, c.member, err, c.want)
		}
	}
	// While a backup or restore of the deployment runs (another member's),
	// a migrate, a deploy and a down are refused, naming it, and change
	// nothing.
	lease, other := deploystate.DeploymentLease(project), "host9 pid 1 (restore)"
	if _, ok, err := stateOf(o).AcquireLease(ctx, lease, other, time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	revs, err := stateOf(o).History(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	_, err = deploy.Migrate(ctx, o, name, "btcpay", to)
	if !errors.Is(err, deploy.ErrMigrateRefused) || !strings.Contains(err.Error(), other+" holds the lease "+lease) {
		t.Errorf("migrate during another's restore: %v; want it refused, naming the other", err)
	}
	if _, err := deploy.Deploy(ctx, o); err == nil || !strings.Contains(err.Error(), "deploy "+project+" not started, nothing changed: "+other+" holds the lease "+lease) {
		t.Errorf("deploy during another's restore: %v; want it refused, naming the other", err)
	}
	if _, err := deploy.Down(ctx, o, o.Recipe.Deployments[0], false); err == nil || !strings.Contains(err.Error(), other+" holds the lease "+lease) {
		t.Errorf("down during another's restore: %v; want it refused, naming the other", err)
	}
	if err := stateOf(o).ReleaseLease(ctx, lease, other); err != nil {
		t.Fatal(err)
	}
	if got := where("btcpay"); got != from {
		t.Fatalf("a refused migrate moved btcpay from %s to %s", from, got)
	}
	if after, err := stateOf(o).History(ctx, project); err != nil || len(after) != len(revs) {
		t.Errorf("the refused deploy recorded a revision: %d revisions, then %d (%v)", len(revs), len(after), err)
	}
	if got := httpGet(t, ctx, instanceOn(t, bed, o, project, "www"), "btcpay.demo.example"); got != "btcpay demo.example" {
		t.Errorf("after a refused down btcpay.demo.example answers %q", got)
	}

	// An earlier migrate cut short left copies of btcpay's volumes on
	// the member (here empty ones), and btcpay ran on since where it
	// was: those copies are stale, and must not be what it moves onto.
	plantStaleCopies(t, pc, to)
	psqlIn(t, o, project, "INSERT INTO pages (body) VALUES ('row before the migrate') ON CONFLICT DO NOTHING")
	lnd := project + "-lightning"
	channelDB := dockerExec(t, o, project, "btcpay", lnd, "cat", "/root/.lightning/regtest/lightningd.sqlite3")
	start := time.Now()
	mg, err := deploy.Migrate(ctx, o, name, "btcpay", to)
	if err != nil {
		t.Fatalf("migrate btcpay from %s to %s: %v", from, to, err)
	}
	t.Logf("migrate btcpay %s -> %s: %s, %d volumes, %d bytes as LXD counts them (room checked), Lightning generation %d -> %d", mg.From, mg.To, time.Since(start).Round(time.Millisecond),
		mg.Volumes, mg.Bytes, mg.Generations[0], mg.Generations[1])
	if got := where("btcpay"); got != to || mg.From != from {
		t.Fatalf("after migrate btcpay is on %s (from %s); want %s (from %s)", got, mg.From, to, from)
	}
	if mg.Generations[1] != mg.Generations[0]+1 || mg.Generations[0] < 1 {
		t.Errorf("Lightning generations %v; want one step on", mg.Generations)
	}
	if g, _ := stateOf(o).LightningGeneration(ctx, fence.NodeName(project, "btcpay")); g != mg.Generations[1] {
		t.Errorf("the state's generation is %d, want %d", g, mg.Generations[1])
	}
	if got := dockerExec(t, o, project, "btcpay", lnd, "cat", "/root/.lightning/.ssbuild-fence"); !strings.Contains(got, fmt.Sprintf(`"generation":%d`, mg.Generations[1])) {
		t.Errorf("the moved node's fence file: %q; want generation %d", got, mg.Generations[1])
	}
	if got := dockerExec(t, o, project, "btcpay", lnd, "cat", "/root/.lightning/regtest/lightningd.sqlite3"); !strings.HasPrefix(got, channelDB) {
		t.Errorf("the moved node's channel database: %q; want it to go on from %q", got, channelDB)
	}
	if got := psqlIn(t, o, project, "SELECT body FROM pages ORDER BY id"); !strings.Contains(got, "row before the migrate") {
		t.Errorf("rows after the migrate: %q", got)
	}
	if got := httpGet(t, ctx, instanceOn(t, bed, o, project, "www"), "btcpay.demo.example"); got != "btcpay demo.example" {
		t.Errorf("btcpay.demo.example after the migrate answered %q", got)
	}
}

// plantStaleCopies puts an empty custom volume on member to under the name
// of each of btcpay's, as a migrate cut short after copying them leaves
// them (not replicas: no replica label).
func plantStaleCopies(t *testing.T, pc lxd.InstanceServer, to string) {
	t.Helper()
	in, _, err := pc.GetInstance("btcpay")
	if err != nil {
		t.Fatal(err)
	}
	dst := pc.UseTarget(to)
	n := 0
	for _, d := range in.ExpandedDevices {
		if d["type"] != "disk" || d["pool"] == "" || d["path"] == "/" || d["source"] == "" {
			continue
		}
		name := strings.TrimPrefix(d["source"], "custom/")
		if _, _, err := dst.GetStoragePoolVolume(d["pool"], "custom", name); err == nil {
			if err := dst.DeleteStoragePoolVolume(d["pool"], "custom", name); err != nil {
				t.Fatal(err)
			}
		}
		if err := dst.CreateStoragePoolVolume(d["pool"], api.StorageVolumesPost{Name: name, Type: "custom"}); err != nil {
			t.Fatalf("plant a stale copy of %s on %s: %v", name, to, err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("btcpay has no custom volumes to plant stale copies of")
	}
}
