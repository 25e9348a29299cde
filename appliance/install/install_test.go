package install

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

var testFiles = []File{
	{Path: "/etc/hostname", Data: []byte("nuc1\n"), Mode: 0o644},
	{Path: "/etc/ssbuild/appliance.yaml", Data: []byte("host:\n  name: nuc1\n"), Mode: 0o644},
	{Path: "/etc/ssbuild/cluster.secret", Data: []byte("0123456789abcdef0123456789abcdef\n"), Mode: 0o600},
}

func TestInstallSparseDisk(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	payloadDir := makePayload(t)
	p, err := VerifyPayload(payloadDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	img := sparseDisk(t, t.TempDir(), "target.img", 80*GiB)
	detachLoops(t, img)
	plan := Plan{Target: img, Layout: testLayout, Host: "nuc1", Files: testFiles}
	if err := Install(context.Background(), p, plan, Options{WorkDir: t.TempDir(), Progress: progress.New(testLog{t}, progress.Plain)}); err != nil {
		t.Fatal(err)
	}
	checkInstalled(t, img, testLayout, testFiles)
	j, ok, err := ReadJournal(img)
	if err != nil || !ok || j.Step != StepDone || j.Host != "nuc1" || j.Payload != p.Digest {
		t.Errorf("journal after the install: %+v %v %v", j, ok, err)
	}
}

// TestInstallLoopDevice installs onto a block device (a loop device over a
// sparse file, without partition scanning), as on a real disk: exclusive
// open, size from the device, no kernel partition devices needed.
func TestInstallLoopDevice(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	p, err := VerifyPayload(makePayload(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := sparseDisk(t, t.TempDir(), "target.img", 80*GiB)
	detachLoops(t, img)
	dev := run(t, "losetup", "-f", "--show", img)
	plan := Plan{Target: dev, Layout: testLayout, Host: "nuc1", Files: testFiles}
	if err := Install(context.Background(), p, plan, Options{WorkDir: t.TempDir(), Progress: progress.New(testLog{t}, progress.Plain)}); err != nil {
		t.Fatal(err)
	}
	run(t, "losetup", "-d", dev)
	checkInstalled(t, img, testLayout, testFiles)
}

// TestInstallStickChangesAfterVerify: an OS image that reads back
// differently during the write (a failing stick) fails the step, and the
// journal does not record it.
func TestInstallStickChangesAfterVerify(t *testing.T) {
	dir := makePayload(t)
	p, err := VerifyPayload(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, stick.OSImage), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img := sparseDisk(t, t.TempDir(), "target.img", 80*GiB)
	err = Install(context.Background(), p, Plan{Target: img, Layout: testLayout, Host: "nuc1"}, Options{})
	if err == nil || !strings.Contains(err.Error(), "os-written") || !strings.Contains(err.Error(), "the stick is failing") {
		t.Fatalf("Install: %v", err)
	}
	if j, _, _ := ReadJournal(img); j.Step != StepPartitioned {
		t.Errorf("journal: %+v, want step %s", j, StepPartitioned)
	}
}
