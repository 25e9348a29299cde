package backup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// leaseBed is the demo recipe, a state folder and an identity: what a
// command needs to reach its lease, without a cluster.
func leaseBed(t *testing.T) (*recipes.Recipe, deploystate.Folder, *age.X25519Identity) {
	t.Helper()
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return r, deploystate.Folder{Dir: secrets.Dir(t.TempDir())}, id
}

// One restore test of a deployment at a time: while another holds its
// scratch copy's lease (a test on another member, or another command),
// a second is refused, naming the holder, and records nothing; a test
// that ends (here failed: no backup in the folder) gives its lease up.
func TestRestoreTestOneAtATime(t *testing.T) {
	r, st, id := leaseBed(t)
	d := r.Deployments[0]
	ctx := context.Background()
	lease := ScratchLease(deploy.Scratch(d))
	if _, ok, err := st.AcquireLease(ctx, lease, "host2 pid 7", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	o := TestOptions{Recipe: r, Deployment: d.Name, From: t.TempDir(), Identities: []age.Identity{id}, State: st, Member: "host1"}
	_, err := Test(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "a restore test of it is running: host2 pid 7 holds the lease "+lease) {
		t.Fatalf("a test while another runs: %v; want it refused, naming the other", err)
	}
	if rt, err := st.LastRestoreTest(ctx, d.Project()); err != nil || rt != nil {
		t.Errorf("the refused test recorded %+v, %v; want nothing", rt, err)
	}
	if l, ok, _ := st.AcquireLease(ctx, lease, "host2 pid 7", time.Minute); !ok {
		t.Errorf("the refused test took the other's lease: %+v", l)
	}
	if err := st.ReleaseLease(ctx, lease, "host2 pid 7"); err != nil {
		t.Fatal(err)
	}

	_, err = Test(ctx, o)
	var te *TestError
	if !errors.As(err, &te) || te.Step != StepVerify {
		t.Fatalf("a test without backups: %v; want it failed before the deploy", err)
	}
	if rt, err := st.LastRestoreTest(ctx, d.Project()); err != nil || rt == nil || rt.Error == "" {
		t.Errorf("recorded %+v, %v; want the failed test", rt, err)
	}
	if l, ok, err := st.AcquireLease(ctx, lease, "host2 pid 7", time.Minute); err != nil || !ok {
		t.Errorf("after a test ended its lease is %+v, %v; want it given up", l, err)
	}
}

// One backup, restore or migrate of a deployment at a time: while another
// member's restore holds the deployment's lease, a backup and a restore
// are refused, naming it, before they touch anything (the backup folder
// is not made, the backup key not either); once it ends, a restore goes on
// (here to fail: the folder holds no backup) and gives the lease up.
func TestOneBackupOrRestoreAtATime(t *testing.T) {
	r, st, id := leaseBed(t)
	d := r.Deployments[0]
	ctx := context.Background()
	lease, other := deploystate.DeploymentLease(d.Project()), "host2 pid 7 (restore)"
	if _, ok, err := st.AcquireLease(ctx, lease, other, time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	to := filepath.Join(t.TempDir(), "usb")
	_, err := Run(ctx, Options{Recipe: r, Deployment: d.Name, To: to, State: st, Member: "host1"})
	if err == nil || !strings.Contains(err.Error(), "backup "+d.Project()+" not started, nothing changed: "+other+" holds the lease "+lease) {
		t.Errorf("a backup during another's restore: %v; want it refused, naming the other", err)
	}
	if _, err := os.Stat(to); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused backup made its folder: %v", err)
	}
	if k, err := DeploymentKeys(ctx, st, d.Project(), false); err != nil || k != nil {
		t.Errorf("the refused backup made a backup key: %v, %v", k, err)
	}
	from := t.TempDir()
	o := RestoreOptions{Recipe: r, Deployment: d.Name, From: from, Identities: []age.Identity{id}, State: st, Member: "host1"}
	err = Restore(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "restore "+d.Project()+" not started, nothing changed: "+other+" holds the lease "+lease) {
		t.Errorf("a restore during another's: %v; want it refused, naming the other", err)
	}
	if l, ok, _ := st.AcquireLease(ctx, lease, other, time.Minute); !ok {
		t.Errorf("a refused command took the other's lease: %+v", l)
	}
	if err := st.ReleaseLease(ctx, lease, other); err != nil {
		t.Fatal(err)
	}

	err = Restore(ctx, o)
	if err == nil || strings.Contains(err.Error(), "holds the lease") || !strings.Contains(err.Error(), "no backup") {
		t.Errorf("a restore from a folder without backups: %v; want it to look for one and find none", err)
	}
	if l, ok, err := st.AcquireLease(ctx, lease, other, time.Minute); err != nil || !ok {
		t.Errorf("after the restore ended the lease is %+v, %v; want it given up", l, err)
	}
}
