//go:build libsqlite3 && cgo

package registry

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/canonical/go-dqlite/client"
	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// A joiner whose Add the leader committed while the answer was lost (the
// leader's process was killed right then, as TestApplianceInitiatorLost
// does) is a member already: Open finds that out and starts it as one,
// instead of retrying the Add for ever ("server ID already in use").
func TestJoinAddedWhileItsAnswerWasLost(t *testing.T) {
	testenv.Short(t)
	requireDqlite(t)
	first := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	joiner := Config{Dir: t.TempDir(), Address: freeAddress(t), Join: []string{first.cfg.Address}}
	// The joiner's files as go-dqlite's app writes them before its Add: its
	// identity, the addresses to join through, and the join marker.
	me := client.NodeInfo{ID: 4242, Address: joiner.Address}
	write := func(name string, v any) {
		data, err := yaml.Marshal(v)
		if err == nil {
			err = os.WriteFile(filepath.Join(joiner.Dir, name), data, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	write("info.yaml", me)
	write("cluster.yaml", []client.NodeInfo{{Address: first.cfg.Address}})
	write("join", nil)
	// The Add went through; the joiner never heard.
	cli, err := client.New(opCtx(t), first.cfg.Address)
	if err != nil {
		t.Fatal(err)
	}
	me.Role = client.Spare
	err = cli.Add(opCtx(t), me)
	cli.Close()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		log strings.Builder
	)
	joiner.Logf = func(format string, args ...any) {
		t.Logf(format, args...)
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&log, format+"\n", args...)
	}
	j := startNode(t, joiner)
	mu.Lock()
	said := log.String()
	mu.Unlock()
	if !strings.Contains(said, "joined already") {
		t.Errorf("the joiner did not find it was a member; its log:\n%s", said)
	}
	if _, err := os.Stat(filepath.Join(joiner.Dir, "join")); !os.IsNotExist(err) {
		t.Errorf("the join marker is still there (%v)", err)
	}
	if err := j.reg.PutHost(opCtx(t), Host{Name: "h2", Address: "10.0.0.12:8443", State: "member"}); err != nil {
		t.Fatal(err)
	}
	wantHost(t, first.reg, "h2")
	if got := roles(t, first.reg); strings.Count(got, joiner.Address) != 1 {
		t.Errorf("members %s, want the joiner once", got)
	}
}
