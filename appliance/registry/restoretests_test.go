package registry

import (
	"testing"
	"time"
)

// TestSingleNodeRestoreTests: a deployment has no restore test until one
// is recorded; the next replaces it; deployments are kept apart.
func TestSingleNodeRestoreTests(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	reg := n.reg
	if rt, err := reg.LastRestoreTest(ctx, "demo-regtest"); err != nil || rt != nil {
		t.Fatalf("restore test before any = %+v, %v; want none", rt, err)
	}
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	one := RestoreTest{Deployment: "demo-regtest", Backup: "2026-12-03T090000Z", Taken: at.Add(-3 * time.Hour),
		Started: at, Ended: at.Add(41 * time.Second), Member: "host1"}
	if err := reg.RecordRestoreTest(ctx, one); err != nil {
		t.Fatal(err)
	}
	two := one
	two.Started, two.Ended, two.Error = at.Add(time.Hour), at.Add(time.Hour+time.Minute), "restore: psql exited 3"
	if err := reg.RecordRestoreTest(ctx, two); err != nil {
		t.Fatal(err)
	}
	if rt, err := reg.LastRestoreTest(ctx, "demo-regtest"); err != nil || rt == nil || *rt != two {
		t.Errorf("last restore test = %+v, %v; want %+v", rt, err, two)
	}
	if rt, err := reg.LastRestoreTest(ctx, "other-mainnet"); err != nil || rt != nil {
		t.Errorf("another deployment's restore test = %+v, %v; want none", rt, err)
	}
}
