package registry

import (
	"errors"
	"testing"
	"time"
)

// TestSingleNodeLightningGenerations: a deployment's Lightning generation
// starts at none (0), moves only from the value the caller read, one step
// at a time, and is kept per deployment.
func TestSingleNodeLightningGenerations(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	reg := n.reg
	if g, err := reg.LightningGeneration(ctx, "demo-regtest/btcpay"); err != nil || g != 0 {
		t.Fatalf("generation before any = %d, %v; want 0", g, err)
	}
	g, err := reg.BumpLightning(ctx, "demo-regtest/btcpay", 0, "host1", "first start")
	if err != nil || g != 1 {
		t.Fatalf("first bump = %d, %v; want 1", g, err)
	}
	if g, err := reg.BumpLightning(ctx, "demo-regtest/btcpay", 1, "host2", "migrate"); err != nil || g != 2 {
		t.Fatalf("bump from 1 = %d, %v; want 2", g, err)
	}
	// A member that read 1 before the migrate cannot bump past it.
	if _, err := reg.BumpLightning(ctx, "demo-regtest/btcpay", 1, "host3", "restore"); !errors.Is(err, ErrGenerationMoved) {
		t.Errorf("bump from a stale 1 = %v; want ErrGenerationMoved", err)
	}
	if g, err := reg.LightningGeneration(ctx, "demo-regtest/btcpay"); err != nil || g != 2 {
		t.Errorf("generation = %d, %v; want 2", g, err)
	}
	// What moved it last is kept with it: the refusal of an older copy names it.
	if rec, err := reg.LightningRecord(ctx, "demo-regtest/btcpay"); err != nil || rec.Member != "host2" || rec.Why != "migrate" || time.Since(rec.At) > time.Minute {
		t.Errorf("record = %+v, %v; want generation 2 moved by host2 for migrate just now", rec, err)
	}
	if g, err := reg.LightningGeneration(ctx, "demo-regtest/clams"); err != nil || g != 0 {
		t.Errorf("another node's generation = %d, %v; want 0", g, err)
	}
}
