package hostos_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// The demo recipe's host OS, from the debootstrap cache the other tests
// share: os.img is a clean ext4 labelled ssbuild-os holding the binary, the
// enabled first-boot unit and the fstab; esp/ boots the tree's kernel.
func TestBuildDemoHostOS(t *testing.T) {
	rootfstest.Require(t)
	testenv.RequireTools(t, "mkfs.ext4", "debugfs", "e2fsck", "blkid")
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	t.Cleanup(func() { mounts.RemoveTree(work) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := hostos.Build(ctx, hostos.Spec{Recipe: r, CacheDir: rootfstest.CacheDir(), Binary: os.Args[0],
		Epoch: 1700000000, WorkDir: work})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host OS built in %v (packages layer cached: %v), kernel %s", time.Since(start).Round(time.Second), res.CacheHit, res.KernelVersion)

	if out, err := exec.Command("e2fsck", "-fn", res.OSImage).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn os.img: %v\n%s", err, out)
	}
	if out, _ := exec.Command("blkid", "-o", "value", "-s", "LABEL", res.OSImage).Output(); strings.TrimSpace(string(out)) != "ssbuild-os" {
		t.Errorf("os.img label %q, want ssbuild-os", out)
	}
	cat := func(p string) string {
		out, err := exec.Command("debugfs", "-R", "cat "+p, res.OSImage).Output()
		if err != nil {
			t.Errorf("debugfs cat %s: %v", p, err)
		}
		return string(out)
	}
	if got := cat(hostos.UnitPath); !strings.Contains(got, "ConditionPathExists=/etc/ssbuild/appliance.yaml") ||
		!strings.Contains(got, "ExecStart=/usr/local/bin/ssbuild appliance run") {
		t.Errorf("unit in os.img:\n%s", got)
	}
	if got := cat("/etc/fstab"); !strings.Contains(got, "PARTLABEL=ssbuild-os / ext4") || !strings.Contains(got, "PARTLABEL=ESP /boot/efi vfat umask=0077,nofail") {
		t.Errorf("fstab in os.img:\n%s", got)
	}
	self, _ := os.ReadFile(os.Args[0])
	if got := cat(hostos.BinaryPath); got != string(self) {
		t.Errorf("%s in os.img: %d bytes, want the binary's %d", hostos.BinaryPath, len(got), len(self))
	}
	if got, err := exec.Command("debugfs", "-R", "stat /sbin/init", res.OSImage).Output(); err != nil || !strings.Contains(string(got), "systemd") {
		t.Errorf("/sbin/init in os.img is not systemd: %v\n%s", err, got)
	}
	link, err := exec.Command("debugfs", "-R", "stat /etc/systemd/system/multi-user.target.wants/"+hostos.UnitName, res.OSImage).Output()
	if err != nil || !strings.Contains(string(link), "Fast link dest: \""+hostos.UnitPath+"\"") {
		t.Errorf("first-boot unit not enabled by a symlink to %s: %v\n%s", hostos.UnitPath, err, link)
	}
	// openssh-server is in the demo's packages: each host makes its own
	// host keys on first boot, none are shipped.
	if keys, err := exec.Command("debugfs", "-R", "ls /etc/ssh", res.OSImage).Output(); err != nil || strings.Contains(string(keys), "ssh_host_") {
		t.Errorf("os.img ships SSH host keys (or /etc/ssh is unreadable: %v):\n%s", err, keys)
	}
	if got := cat("/etc/systemd/system/" + hostos.SSHKeysUnitName); !strings.Contains(got, "ExecStart=/usr/bin/ssh-keygen -A") {
		t.Errorf("%s:\n%s", hostos.SSHKeysUnitName, got)
	}
	if got, _ := exec.Command("debugfs", "-R", "stat /etc/systemd/system/ssh.service.wants/"+hostos.SSHKeysUnitName, res.OSImage).Output(); !strings.Contains(string(got), "Fast link dest") {
		t.Errorf("%s not enabled for ssh.service:\n%s", hostos.SSHKeysUnitName, got)
	}
	for _, f := range []string{stick.BootloaderESP, hostos.KernelFile, hostos.InitrdFile, hostos.LoaderConf} {
		if fi, err := os.Stat(filepath.Join(res.ESPDir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("esp/%s: %v", f, err)
		}
	}
	entry, _ := os.ReadFile(filepath.Join(res.ESPDir, hostos.EntryFile))
	if !strings.Contains(string(entry), "options root=PARTLABEL=ssbuild-os") {
		t.Errorf("loader entry:\n%s", entry)
	}
}
