package registry

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// failoverBound is how long the surviving nodes may take to accept writes
// after a node dies. Raft elects within a few seconds (figures in
// README.md); the margin is for a loaded 2-core CI machine.
const failoverBound = 20 * time.Second

// startCluster starts n nodes on loopback: node 0 bootstraps, the others
// join it, each in its own directory.
func startCluster(t testing.TB, n int, tlsConf *TLS) []*testNode {
	t.Helper()
	first := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), TLS: tlsConf})
	nodes := []*testNode{first}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), Join: []string{first.cfg.Address}, TLS: tlsConf}))
	}
	return nodes
}

// roles returns "address=role" for every member, sorted.
func roles(t testing.TB, reg *Registry) string {
	t.Helper()
	members, err := reg.Members(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range members {
		out = append(out, m.Address+"="+m.Role)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func wantHost(t testing.TB, reg *Registry, name string) {
	t.Helper()
	if _, err := reg.Host(opCtx(t), name); err != nil {
		t.Errorf("read %s through node %s: %v", name, reg.Address(), err)
	}
}

// timedPut writes a host through reg and returns how long it took,
// failing the test beyond failoverBound.
func timedPut(t testing.TB, reg *Registry, name string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), failoverBound)
	defer cancel()
	start := time.Now()
	if err := reg.PutHost(ctx, Host{Name: name, Address: "10.0.0.1:8443", State: "member"}); err != nil {
		t.Fatalf("write %s through node %s within %v: %v", name, reg.Address(), failoverBound, err)
	}
	return time.Since(start)
}

func TestThreeNodesReplicate(t *testing.T) {
	testenv.Short(t)
	nodes := startCluster(t, 3, nil)
	ctx := opCtx(t)

	// app's role management makes all three voters: any one can go.
	got := roles(t, nodes[2].reg)
	for _, n := range nodes {
		if !strings.Contains(got, n.cfg.Address+"=voter") {
			t.Errorf("members %s: %s is not a voter", got, n.cfg.Address)
		}
	}
	for i, n := range nodes {
		name := fmt.Sprintf("written-on-%d", i)
		if err := n.reg.PutHost(ctx, Host{Name: name, Address: "10.0.0.1:8443", State: "member"}); err != nil {
			t.Fatalf("write through node %d: %v", i, err)
		}
	}
	for _, n := range nodes {
		hosts, err := n.reg.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if names := hostNames(hosts); names != "written-on-0,written-on-1,written-on-2" {
			t.Errorf("node %s sees %s", n.cfg.Address, names)
		}
	}
	for _, n := range nodes {
		if v, err := n.reg.Version(ctx); err != nil || v != len(migrations) {
			t.Errorf("node %s: schema version %d, %v", n.cfg.Address, v, err)
		}
	}
}

// The initiator's host dies (SIGKILL, no handover): the other two elect a
// leader and take writes; when it comes back it catches up, so that the
// cluster then survives losing another node.
func TestLossOfBootstrapNode(t *testing.T) {
	testenv.Short(t)
	requireDqlite(t)
	first := startChildNode(t, Config{Dir: filepath.Join(t.TempDir(), "n1"), Address: freeAddress(t)})
	join := []string{first.cfg.Address}
	n2 := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), Join: join})
	n3 := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), Join: join})
	first.putHost(t, "before")
	leader, err := n2.reg.Leader(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader before the loss: %s (bootstrap node %s)", leader, first.cfg.Address)

	first.kill()
	took := timedPut(t, n2.reg, "after-loss")
	t.Logf("first write after SIGKILL of the bootstrap node took %v", took)
	wantHost(t, n3.reg, "before")
	wantHost(t, n3.reg, "after-loss")
	if l, err := n3.reg.Leader(opCtx(t)); err != nil || l == first.cfg.Address {
		t.Errorf("leader after the loss = %q, %v", l, err)
	}

	// It comes back on the same directory, as after a reboot, with no Join.
	n1 := startNode(t, Config{Dir: first.cfg.Dir, Address: first.cfg.Address})
	wantHost(t, n1.reg, "after-loss")

	// n1 + n3 are a quorum only if n1 holds the log: kill n2 and write.
	n2.crash(t)
	took = timedPut(t, n1.reg, "after-second-loss")
	t.Logf("first write after losing node 2 took %v", took)
	hosts, err := n3.reg.Hosts(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if names := hostNames(hosts); names != "after-loss,after-second-loss,before" {
		t.Errorf("node 3 sees %s", names)
	}
}

// Close hands leadership over, so the others take writes at once instead
// of waiting for an election.
func TestCloseHandsOverLeadership(t *testing.T) {
	testenv.Short(t)
	nodes := startCluster(t, 3, nil)
	leaderAddr, err := nodes[1].reg.Leader(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var leader *testNode
	var others []*testNode
	for _, n := range nodes {
		if n.cfg.Address == leaderAddr {
			leader = n
		} else {
			others = append(others, n)
		}
	}
	if leader == nil {
		t.Fatalf("leader %s is none of the nodes", leaderAddr)
	}
	start := time.Now()
	if err := leader.reg.Close(opCtx(t)); err != nil {
		t.Errorf("Close of the leader: %v", err)
	}
	leader.reg = nil
	closed := time.Since(start)
	took := timedPut(t, others[0].reg, "after-handover")
	t.Logf("Close (handover) took %v, first write after it %v", closed, took)
	if took > 2*time.Second {
		t.Errorf("first write after a handover took %v: leadership was not handed over", took)
	}
	if l, err := others[1].reg.Leader(opCtx(t)); err != nil || l == leaderAddr {
		t.Errorf("leader after Close = %q, %v", l, err)
	}
	wantHost(t, others[1].reg, "after-handover")
}

// A joiner whose host boots before the initiator's waits in Open and
// joins once the initiator's node is up.
func TestJoinerStartsBeforeInitiator(t *testing.T) {
	testenv.Short(t)
	requireDqlite(t)
	first := Config{Dir: t.TempDir(), Address: freeAddress(t)}
	joined := make(chan *testNode, 1)
	go func() {
		// startNode's t.Fatal must not run here: report through the channel.
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		cfg := Config{Dir: t.TempDir(), Address: freeAddress(t), Join: []string{first.Address}}
		reg, err := Open(ctx, cfg)
		if err != nil {
			t.Errorf("joiner: %v", err)
			joined <- nil
			return
		}
		joined <- &testNode{cfg: cfg, reg: reg}
	}()
	time.Sleep(2 * time.Second) // the joiner is retrying now
	n1 := startNode(t, first)
	j := <-joined
	if j == nil {
		return
	}
	t.Cleanup(func() { j.stop(t) })
	if err := j.reg.PutHost(opCtx(t), Host{Name: "h2", Address: "10.0.0.12:8443", State: "joining"}); err != nil {
		t.Fatal(err)
	}
	wantHost(t, n1.reg, "h2")
	// Two nodes are one voter and a spare (two voters would only double
	// the ways to lose quorum); a third node makes all three voters.
	got := roles(t, j.reg)
	if !strings.Contains(got, first.Address+"=voter") || !strings.Contains(got, j.cfg.Address+"=spare") {
		t.Errorf("members %s, want %s a voter and %s a spare", got, first.Address, j.cfg.Address)
	}
}

// A joiner killed while it waits for the initiator, and again after it
// joined, comes back with the same config and converges: one member per
// host, three voters.
func TestJoinerKilledAndRestarted(t *testing.T) {
	testenv.Short(t)
	requireDqlite(t)
	first := Config{Dir: t.TempDir(), Address: freeAddress(t)}
	join := []string{first.Address}
	joiner := Config{Dir: filepath.Join(t.TempDir(), "joiner"), Address: freeAddress(t), Join: join}
	early := spawnChildNode(t, joiner)
	time.Sleep(time.Second) // it has recorded its identity and retries the join
	early.kill()
	if _, err := os.Stat(filepath.Join(joiner.Dir, "info.yaml")); err != nil {
		t.Fatalf("the joiner was killed before it started: %v", err)
	}

	n1 := startNode(t, first)
	startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), Join: join})
	j := startNode(t, joiner)
	want := func(when string) {
		t.Helper()
		got := roles(t, n1.reg)
		if strings.Count(got, "=voter") != 3 || strings.Count(got, joiner.Address) != 1 || strings.Count(got, "=") != 3 {
			t.Errorf("%s: members %s, want three voters, the joiner once", when, got)
		}
	}
	want("after the restart of a joiner killed before joining")

	j.crash(t)
	j.restart(t)
	want("after the restart of a joiner killed after joining")
	if err := j.reg.PutHost(opCtx(t), Host{Name: "h3", Address: "10.0.0.13:8443", State: "member"}); err != nil {
		t.Fatal(err)
	}
	wantHost(t, n1.reg, "h3")
}
