package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
)

// checkFence is issue 16's Lightning fencing on the deployed demo (a
// subtest of TestDeployDemoOnThreeHosts): a copy of the btcpay instance's
// Docker volume taken before a restore, started again afterwards, does not
// start its Lightning node (dockerd does not, and a deploy refuses, naming
// both generations); restoring the same, now older, backup is refused
// without the recovery flag, and with it only the node's static files come
// back (its config and channel database stay as they are) and this copy
// becomes the current one.
func checkFence(t *testing.T, ctx context.Context, o deploy.Options, project string, www endpoint) {
	ids := ownerKey(t, o)
	name := o.Recipe.Deployments[0].Name
	state := stateOf(o)
	node := fence.NodeName(project, "btcpay")
	lnd := project + "-lightning"
	pc := o.LXD.UseProject(project)
	gen := func() int64 {
		g, err := state.LightningGeneration(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	g := gen()
	if g < 1 {
		t.Fatalf("the deployed node's generation is %d; want one recorded at its first start", g)
	}
	if got := dockerExec(t, o, project, "btcpay", lnd, "cat", "/root/.lightning/.ssbuild-fence"); !strings.Contains(got, fmt.Sprintf(`"generation":%d`, g)) {
		t.Fatalf("the node's fence file holds %q; want generation %d", got, g)
	}
	dir := filepath.Join(t.TempDir(), "backup")
	if _, err := backup.Run(ctx, backup.Options{FilesCache: t.TempDir(), LXD: o.LXD, Recipe: o.Recipe, Deployment: name, To: dir, State: state}); err != nil {
		t.Fatalf("backup: %v", err)
	}

	// The old copy: the instance's Docker volume (the node's data and the
	// containers) as it is before the restore.
	in, _, err := pc.GetInstance("btcpay")
	if err != nil {
		t.Fatal(err)
	}
	pool := in.ExpandedDevices["root"]["pool"]
	vols := pc.UseTarget(in.Location)
	const snap = "before-restore"
	start := time.Now()
	op, err := vols.CreateStoragePoolVolumeSnapshot(pool, "custom", "btcpay-docker", api.StorageVolumeSnapshotsPost{Name: snap})
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		t.Fatalf("snapshot btcpay-docker: %v", err)
	}
	t.Cleanup(func() {
		if op, err := vols.DeleteStoragePoolVolumeSnapshot(pool, "custom", "btcpay-docker", snap); err == nil {
			op.Wait()
		}
	})
	if err := backup.Restore(ctx, backup.RestoreOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: name, From: dir, Identities: ids, State: state}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := gen(); got != g+1 {
		t.Fatalf("after the restore the generation is %d; want %d", got, g+1)
	}
	if !running(t, o, project, lnd) {
		t.Fatal("the node does not run after the restore")
	}

	// The old copy started again.
	setState(t, ctx, o, project, "btcpay", "stop")
	if err := vols.UpdateStoragePoolVolume(pool, "custom", "btcpay-docker", api.StorageVolumePut{Restore: snap}, ""); err != nil {
		t.Fatalf("restore the volume snapshot: %v", err)
	}
	setState(t, ctx, o, project, "btcpay", "start")
	waitDocker(t, ctx, o, project, "btcpay")
	if running(t, o, project, lnd) {
		t.Fatal("dockerd started the old copy's Lightning node by itself")
	}
	_, err = deploy.Deploy(ctx, o)
	var refused *fence.Refused
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), fmt.Sprintf("holds generation %d, the current generation of %s is %d", g, node, g+1)) {
		t.Fatalf("deploy with the old copy: %v; want the node refused naming generations %d and %d", err, g, g+1)
	}
	t.Logf("old copy refused: %v", err)
	if running(t, o, project, lnd) {
		t.Fatal("the old copy's Lightning node runs after the refused deploy")
	}
	t.Logf("old copy made, restored, started and refused: %s", time.Since(start).Round(time.Millisecond))

	// The same backup is now older than the node's live state.
	volume := func(script string) string {
		return strings.TrimSpace(execIn(t, o, project, "btcpay", "docker", "run", "--rm", "-v", project+"-lightning-data:/v", "ssbuild-demo/web:1",
			"/bin/sh", "-c", "cd /v/regtest && "+script))
	}
	// The node ran on: its static channel backup and config changed (its
	// seed never does: a channel database belongs to one seed).
	volume("for f in emergency.recover config; do echo changed > $f; done")
	channelDB := volume("cat lightningd.sqlite3")
	err = backup.Restore(ctx, backup.RestoreOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: name, From: dir, Identities: ids, State: state})
	var stale *backup.StaleLightning
	if !errors.As(err, &stale) || !strings.Contains(err.Error(), backup.RecoverFlag) || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("restore of an older backup: %v; want it refused naming %s", err, backup.RecoverFlag)
	}
	if got := volume("cat emergency.recover"); got != "changed" {
		t.Fatalf("a refused restore changed emergency.recover to %q", got)
	}
	start = time.Now()
	if err := backup.Restore(ctx, backup.RestoreOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: name, From: dir, Identities: ids,
		State: state, RecoverLightning: true}); err != nil {
		t.Fatalf("restore %s: %v", backup.RecoverFlag, err)
	}
	t.Logf("recovery from the static backup: %s", time.Since(start).Round(time.Millisecond))
	for f, want := range map[string]string{"hsm_secret": "stand-in hsm_secret", "emergency.recover": "stand-in emergency.recover", "config": "changed"} {
		if got := dockerExec(t, o, project, "btcpay", lnd, "cat", "/root/.lightning/regtest/"+f); got != want {
			t.Errorf("%s after the recovery: %q, want %q", f, got, want)
		}
	}
	if got := dockerExec(t, o, project, "btcpay", lnd, "cat", "/root/.lightning/regtest/lightningd.sqlite3"); !strings.HasPrefix(got, channelDB) {
		t.Errorf("the channel database after the recovery: %q; want the one it had (%q) left as it was", got, channelDB)
	}
	if got := gen(); got != g+2 {
		t.Errorf("after the recovery the generation is %d; want %d", got, g+2)
	}
	if !running(t, o, project, lnd) {
		t.Error("the recovered node does not run")
	}
	if _, err := deploy.Deploy(ctx, o); err != nil {
		t.Errorf("deploy after the recovery: %v", err)
	}
	if got := httpGet(t, ctx, www, "btcpay.demo.example"); got != "btcpay demo.example" {
		t.Errorf("btcpay.demo.example after the recovery: %q", got)
	}
}

// running says whether a container of the instance's Docker runs.
func running(t *testing.T, o deploy.Options, project, ctr string) bool {
	t.Helper()
	return strings.TrimSpace(execIn(t, o, project, "btcpay", "docker", "inspect", "-f", "{{.State.Running}}", ctr)) == "true"
}

// setState stops or starts an instance.
func setState(t *testing.T, ctx context.Context, o deploy.Options, project, instance, action string) {
	t.Helper()
	op, err := o.LXD.UseProject(project).UpdateInstanceState(instance, api.InstanceStatePut{Action: action, Timeout: 60, Force: true}, "")
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", action, instance, err)
	}
}

// waitDocker waits until the instance's Docker answers.
func waitDocker(t *testing.T, ctx context.Context, o deploy.Options, project, instance string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if _, _, code, err := lxdexec.Run(o.LXD.UseProject(project), instance, "docker", "version"); err == nil && code == 0 {
			return
		}
	}
	t.Fatalf("docker in %s does not answer", instance)
}
