package fence_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// node is a stack of one Lightning stand-in (busybox) in project.
func node(project string) *stack.Stack {
	return &stack.Stack{Project: project, Instance: "btcpay",
		Volumes: []stack.Volume{{Name: "lightning-data"}},
		Services: []stack.Service{{Name: "lightning", Image: "ssbuild-demo/web:1", Init: true,
			Command:   []string{"/bin/sh", "-c", "echo started >> /ln/channel.db; exec /bin/busybox sleep 100000"},
			Mounts:    []stack.Mount{{Type: "volume", Source: "lightning-data", Target: "/ln"}},
			Lightning: &stack.Lightning{Volume: "lightning-data", ChannelDB: "/channel.db", Seed: "/hsm_secret", Static: []string{"/hsm_secret"}}}}}
}

// TestFence on a real Docker: the node's first start records generation 1
// in the state and its volume; a bump moves both on; a copy holding an
// older generation is refused naming both; a new, empty node takes the
// current generation.
func TestFence(t *testing.T) {
	testenv.Short(t)
	d := testdocker.Start(t)
	c := d.Client
	testdocker.ImportBusybox(t, c, "ssbuild-demo/web:1", "fence")
	ctx := context.Background()
	state := deploystate.Folder{Dir: secrets.Dir(t.TempDir())}
	st := node("p-regtest")
	st.Fence = fence.Check(state)
	if _, err := stack.Apply(ctx, c, st, progress.Discard()); err != nil {
		t.Fatalf("first start: %v", err)
	}
	svc := st.LightningService()
	ctr := st.ContainerName("lightning")
	held := func() int64 {
		g, _, err := fence.Held(ctx, c, svc, ctr)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	current := func() int64 {
		g, err := state.LightningGeneration(ctx, "p-regtest/btcpay")
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	if held() != 1 || current() != 1 {
		t.Fatalf("after the first start: held %d, current %d; want 1 and 1", held(), current())
	}
	from, to, err := fence.Bump(ctx, c, state, st, "migrate to host2")
	if err != nil || from != 1 || to != 2 || held() != 2 || current() != 2 {
		t.Fatalf("bump: %d -> %d, %v; held %d, current %d", from, to, err, held(), current())
	}
	if err := fence.Start(ctx, c, state, st); err != nil {
		t.Fatalf("start after the bump: %v", err)
	}

	// An older copy: the same volume holding generation 1 again.
	if err := fence.Stop(ctx, c, st); err != nil {
		t.Fatal(err)
	}
	if err := fence.Write(ctx, c, svc, ctr, "p-regtest/btcpay", 1); err != nil {
		t.Fatal(err)
	}
	err = fence.Start(ctx, c, state, st)
	var refused *fence.Refused
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "this copy holds generation 1, the current generation of p-regtest/btcpay is 2") {
		t.Fatalf("start of an older copy: %v; want it refused naming generations 1 and 2", err)
	}
	// ...and what made generation 2, so the owner knows which copy is the live one.
	if !strings.Contains(err.Error(), "generation 2 was set at "+time.Now().UTC().Format("2006-01-02")) || !strings.Contains(err.Error(), " UTC: migrate to host2)") {
		t.Errorf("the refusal %q does not say what moved the generation (migrate to host2, today)", err)
	}
	if info, err := c.ContainerInspect(ctx, ctr); err != nil || info.State.Running {
		t.Fatalf("the older copy runs (%v)", err)
	}
	// Apply (a deploy) refuses it the same way.
	if _, err := stack.Apply(ctx, c, st, progress.Discard()); !errors.As(err, &refused) {
		t.Fatalf("Apply with an older copy: %v; want it refused", err)
	}

	// A new, empty node of a deployment whose node is at generation 3
	// (its volume lost, say) takes generation 3.
	fresh := node("q-regtest")
	fresh.Fence = fence.Check(state)
	for g := int64(0); g < 3; g++ {
		if _, err := state.BumpLightning(ctx, "q-regtest/btcpay", g, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stack.Apply(ctx, c, fresh, progress.Discard()); err != nil {
		t.Fatalf("a new, empty node: %v", err)
	}
	if g, _, err := fence.Held(ctx, c, fresh.LightningService(), fresh.ContainerName("lightning")); err != nil || g != 3 {
		t.Errorf("the new node holds %d, %v; want 3", g, err)
	}

	// A node an older ssbuild started (a channel database, no fence file,
	// no generation) is fenced at generation 1 when next started.
	old := node("r-regtest")
	old.Fence = func(context.Context, client.APIClient, *stack.Stack, *stack.Service, string) error { return nil }
	if _, err := stack.Apply(ctx, c, old, progress.Discard()); err != nil {
		t.Fatal(err)
	}
	if err := fence.Stop(ctx, c, old); err != nil {
		t.Fatal(err)
	}
	if g, db, err := fence.Held(ctx, c, old.LightningService(), old.ContainerName("lightning")); err != nil || g != 0 || !db {
		t.Fatalf("the unfenced node: held %d, channel database %v, %v", g, db, err)
	}
	old.Fence = fence.Check(state)
	if _, err := stack.Apply(ctx, c, old, progress.Discard()); err != nil {
		t.Fatalf("starting a node from before fencing: %v", err)
	}
	if g, _, err := fence.Held(ctx, c, old.LightningService(), old.ContainerName("lightning")); err != nil || g != 1 {
		t.Errorf("the node from before fencing holds %d, %v; want 1", g, err)
	}
}
