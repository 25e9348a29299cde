package mounts

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/a\040b`:  "/tmp/a b",
		`/x\011y\134z`: "/x\ty\\z",
		`/plain`:       "/plain",
		`/trailing\04`: `/trailing\04`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// The property everything else relies on: removing a tree with a bind mount
// of a host directory in it unmounts first and leaves the host files alone,
// even when the mount is busy and nested under another mount.
func TestRemoveTreeNeverRemovesThroughMounts(t *testing.T) {
	testenv.RequireRoot(t)
	host := t.TempDir()
	sentinel := filepath.Join(host, "keep-me")
	if err := os.WriteFile(sentinel, []byte("host file"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "a tree") // a space: mountinfo escapes it
	dev := filepath.Join(tree, "dev")
	bind := filepath.Join(dev, "host")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dev, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { UnmountAll(tree) })
	if err := os.Mkdir(bind, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(host, bind, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	busy, err := os.Open(filepath.Join(bind, "keep-me")) // makes the bind busy
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	got, err := Under(tree)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != bind || got[1] != dev {
		t.Fatalf("Under(%q) = %q, want [%q %q] (deepest first)", tree, got, bind, dev)
	}
	if err := RemoveTree(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Errorf("%s still exists (%v)", tree, err)
	}
	if data, err := os.ReadFile(sentinel); err != nil || string(data) != "host file" {
		t.Errorf("host file behind the bind mount was touched: %q, %v", data, err)
	}
	if left, _ := Under(tree); len(left) > 0 {
		t.Errorf("mounts left: %v", left)
	}
}

// Tested on the guard itself: a regression must not get to unmount or
// remove the test machine.
func TestRefusesTheWholeMachine(t *testing.T) {
	for _, dir := range []string{"/", "/.", "//", "/tmp/.."} {
		if err := refuseWholeMachine(dir); err == nil {
			t.Errorf("refuseWholeMachine(%q) accepted it", dir)
		}
	}
	if err := refuseWholeMachine(t.TempDir()); err != nil {
		t.Errorf("a temp dir was refused: %v", err)
	}
}
