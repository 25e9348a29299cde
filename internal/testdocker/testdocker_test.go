package testdocker

import (
	"context"
	"os"
	"testing"
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
