package backup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// One restore test of a deployment at a time: while another holds its
// scratch copy's lease (a test on another member, or another command),
// a second is refused, naming the holder, and records nothing; a test
// that ends (here failed: no backup in the folder) gives its lease up.
func TestRestoreTestOneAtATime(t *testing.T) {
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	d := r.Deployments[0]
	st := deploystate.Folder{Dir: secrets.Dir(t.TempDir())}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lease := ScratchLease(deploy.Scratch(d))
	if _, ok, err := st.AcquireLease(ctx, lease, "host2 pid 7", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	o := TestOptions{Recipe: r, Deployment: d.Name, From: t.TempDir(), Identities: []age.Identity{id}, State: st, Member: "host1"}
	_, err = Test(ctx, o)
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
