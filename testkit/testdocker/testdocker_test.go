package testdocker

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/network"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestStartImportStop: a daemon answers on its own socket, imports an image,
// and leaves nothing behind once stopped.
func TestStartImportStop(t *testing.T) {
	d := Start(t)
	ctx := context.Background()
	if _, err := d.Client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	id1 := ImportBusybox(t, d.Client, "ssbuild-test/one:1", "one")
	id2 := ImportBusybox(t, d.Client, "ssbuild-test/two:1", "two")
	if id1 == id2 || id1 == "" {
		t.Fatalf("image IDs %q and %q: want two different IDs", id1, id2)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Stop: %v", d.Dir, err)
	}
	for _, p := range []*proc{d.dockerd, d.containerd} {
		select {
		case <-p.exited:
		default:
			t.Fatalf("%s still running after Stop", p.cmd.Path)
		}
	}
}

// TestNothingOutsideDir: the daemon writes only below its own directory, not
// its trust key in /etc/docker.
func TestNothingOutsideDir(t *testing.T) {
	d := Start(t)
	if _, err := os.Stat(filepath.Join(d.Dir, "key.json")); err != nil {
		t.Errorf("trust key not in the daemon's directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "containerd-opt")); err != nil {
		t.Errorf("containerd's opt directory not in the daemon's directory: %v", err)
	}
}

// TestStartFailureShowsLog: a daemon that does not come up is reported with
// the tail of its log, and Stop still cleans up.
func TestStartFailureShowsLog(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "dockerd", "containerd")
	d, err := start("--no-such-flag")
	if d != nil {
		defer func() {
			if err := d.Stop(); err != nil {
				t.Error(err)
			}
			if _, err := os.Stat(d.Dir); !os.IsNotExist(err) {
				t.Errorf("%s left after Stop: %v", d.Dir, err)
			}
		}()
	}
	if err == nil || !strings.Contains(err.Error(), "dockerd did not start") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("start with a bad flag: %v; want an error with dockerd's log", err)
	}
}

// TestStopRemovesNetworkBridges: a network's bridge outlives dockerd on the
// machine unless Stop removes it; left over, they use up Docker's address
// pools and later daemons cannot create networks.
func TestStopRemovesNetworkBridges(t *testing.T) {
	d := Start(t)
	n, err := d.Client.NetworkCreate(context.Background(), "leak-check", network.CreateOptions{Driver: "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	br := "br-" + n.ID[:12]
	if _, err := net.InterfaceByName(br); err != nil {
		t.Fatalf("network bridge %s not on the machine: %v", br, err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(br); err == nil {
		t.Errorf("bridge %s is still on the machine after Stop", br)
	}
}
