package registry

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// A host whose disk was replaced comes back with an empty registry
// directory under its old address: once the others remove its old node,
// the fresh node joins under that address, and the registry has one node
// per host, three voters, and the old and new writes.
func TestReplacedNodeJoinsAgain(t *testing.T) {
	testenv.Short(t)
	requireDqlite(t)
	nodes := startCluster(t, 3, nil)
	gone := nodes[2]
	if err := nodes[0].reg.PutHost(opCtx(t), Host{Name: "before", Address: "10.0.0.1:8443", State: "online"}); err != nil {
		t.Fatal(err)
	}
	gone.crash(t)
	if err := nodes[0].reg.RemoveNode(opCtx(t), gone.cfg.Address); err != nil {
		t.Fatalf("remove the dead node: %v", err)
	}
	// Again, and an address that is no node's: nothing to do.
	if err := nodes[1].reg.RemoveNode(opCtx(t), gone.cfg.Address); err != nil {
		t.Errorf("remove it twice: %v", err)
	}
	if err := nodes[0].reg.RemoveNode(opCtx(t), nodes[0].cfg.Address); err == nil {
		t.Error("a node removed itself")
	}
	if got := roles(t, nodes[0].reg); strings.Contains(got, gone.cfg.Address) {
		t.Fatalf("members after the removal: %s", got)
	}

	fresh := startNode(t, Config{Dir: filepath.Join(t.TempDir(), "fresh"), Address: gone.cfg.Address,
		Join: []string{nodes[0].cfg.Address, nodes[1].cfg.Address}})
	wantHost(t, fresh.reg, "before")
	if err := fresh.reg.PutHost(opCtx(t), Host{Name: "after", Address: "10.0.0.3:8443", State: "online"}); err != nil {
		t.Fatal(err)
	}
	wantHost(t, nodes[1].reg, "after")
	got := roles(t, nodes[0].reg)
	if strings.Count(got, "=") != 3 || strings.Count(got, gone.cfg.Address) != 1 || strings.Count(got, "=voter") != 3 {
		t.Errorf("members %s, want three voters, the replaced address once", got)
	}
}
