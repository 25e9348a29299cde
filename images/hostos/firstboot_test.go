package hostos_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/gpttest"
	"github.com/sovereign-stack/ssbuild/testkit/qemutest"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// The default recipe's host OS (Debian 12, LXD from Debian, ZFS built from
// contrib's zfs-dkms), installed by the stick onto a blank disk in qemu
// (TCG, OVMF), then that disk booted alone with the firmware variables the
// install left, as a real machine keeps its own: on its own kernel the
// first-boot service initialises LXD with the storage pool as ZFS on the
// ssbuild-zfs partition, bootstraps a one-host cluster and serves the
// registry; checked over SSH with the recipe's key as the owner would.
func TestInstalledHostFirstBootZFS(t *testing.T) {
	rootfstest.Require(t)
	qemutest.Require(t)
	testenv.RequireTools(t, "ssh", "ssh-keygen", "make", "gcc")
	start := time.Now()
	bin := qemutest.StaticSSBuild(t)
	key := filepath.Join(t.TempDir(), "owner_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "owner@example", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	const mac = "02:5e:00:00:02:01"
	def, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	recipe := zfsHostRecipe(t, def, mac, strings.TrimSpace(string(pub)))
	out := filepath.Join(t.TempDir(), "out")
	qemutest.BuildInstaller(t, bin, recipe, out)
	built := time.Since(start)

	// The host OS carries the module as a package and no compiler.
	osImg := filepath.Join(t.TempDir(), "os.img")
	extractOSImage(t, filepath.Join(out, "installer.img"), osImg)
	for _, absent := range []string{"/usr/bin/gcc-12", "/usr/bin/make", "/usr/sbin/dkms"} {
		if got := debugfs(t, osImg, "stat "+absent); !strings.Contains(got, "not found") {
			t.Errorf("the host OS holds %s (a compiler or dkms left behind)", absent)
		}
	}

	disk := qemutest.BlankDisk(t, "nuc.raw", 10<<30)
	vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
	installStart := time.Now()
	serial, exited := qemutest.Until(t, 12*time.Minute, nil, qemutest.Machine{Stick: filepath.Join(out, "installer.img"), Disks: []string{disk}, MAC: mac, Vars: vars}.Args(t)...)
	if !exited || !regexp.MustCompile(`installed zfs1 onto /dev/vda`).MatchString(serial) {
		t.Fatalf("the install did not finish (qemu exited: %v); serial tail:\n%s", exited, qemutest.Tail(serial, 5000))
	}
	installed := time.Since(installStart)

	port := freePort(t)
	bootStart := time.Now()
	boot := qemutest.Start(t, qemutest.Machine{Disks: []string{disk}, MAC: mac, Vars: vars, SSH: port, Memory: 2048, CPUs: 2}.Args(t)...)
	ssh := func(cmd string) (string, error) {
		c := exec.Command("ssh", "-i", key, "-p", fmt.Sprint(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
			"-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@127.0.0.1", cmd)
		b, err := c.CombinedOutput()
		return string(b), err
	}
	// Serving: the registry answers `appliance status` and lists this host
	// in it. TCG runs the guest ten to fifty times slower than a NUC.
	var status string
	serving := regexp.MustCompile(`(?m)^  zfs1\s+(serving|deployed)\s`)
	deadline := time.Now().Add(25 * time.Minute)
	for {
		status, err = ssh(hostos.BinaryPath + " appliance status")
		if err == nil && strings.Contains(status, "Hosts (from the registry):") && serving.MatchString(status) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first boot did not reach serving in 25 min; last status (%v):\n%s\nserial tail:\n%s", err, status, qemutest.Tail(boot.Serial(), 6000))
		}
		time.Sleep(15 * time.Second)
	}
	firstBoot := time.Since(bootStart)
	t.Logf("appliance status on zfs1:\n%s", status)
	if !regexp.MustCompile(`(?m)^  zfs1\s+Online\s`).MatchString(status) {
		t.Errorf("appliance status does not list zfs1 as an online LXD member")
	}

	checks := []struct{ cmd, want, what string }{
		{"zpool status -x", "all pools are healthy", "zpool status is clean"},
		{"zpool list -H -o name,health", def.Cluster.Storage.Pool + "\tONLINE", "the recipe's pool is online"},
		{"lsmod", "zfs", "the zfs module is loaded"},
		{"dpkg-query -W -f='${Status} ${Version}' " + hostos.ZFSModulesPackage, "install ok installed", "the module package is installed"},
		// LXD's own datasets: LXD initialised the pool with the zfs driver.
		{"zfs list -H -o name", def.Cluster.Storage.Pool + "/images", "LXD's datasets are in the pool"},
	}
	for _, c := range checks {
		got, err := ssh(c.cmd)
		if err != nil || !strings.Contains(got, c.want) {
			t.Errorf("%s: `%s` (%v) printed:\n%s\nwant %q in it", c.what, c.cmd, err, got, c.want)
		}
	}
	// The pool's device is the install's third partition (by its label, or
	// as the kernel names it once imported from the cache).
	if got, err := ssh("zpool status -P " + def.Cluster.Storage.Pool); err != nil || !regexp.MustCompile(hostdisk.LabelZFS+`|/dev/vda3`).MatchString(got) {
		t.Errorf("the pool is not on the %s partition (%v):\n%s", hostdisk.LabelZFS, err, got)
	}
	t.Logf("figures under TCG: build %v, install %v, first boot to serving %v (total %v)",
		built.Round(time.Second), installed.Round(time.Second), firstBoot.Round(time.Second), time.Since(start).Round(time.Second))
}

// zfsHostRecipe is one host with the default recipe's host OS (its
// installer.source and installer.packages), a small layout and the
// default's ZFS pool, on qemu's user network (10.0.2.0/24).
func zfsHostRecipe(t *testing.T, def *recipes.Recipe, mac, sshKey string) string {
	t.Helper()
	src, in := def.Installer.Source, def.Installer
	if !strings.Contains(strings.Join(in.Packages, " "), "zfs-dkms") || !strings.Contains(strings.Join(in.Packages, " "), "lxd") {
		t.Fatalf("the default recipe's host packages %v lack lxd or zfs-dkms", in.Packages)
	}
	text := fmt.Sprintf(`apiVersion: ssbuild/v1
name: zfs-first-boot
image:
  source: {kind: debootstrap, suite: bookworm, mirror: %s, variant: minbase}
  output: {formats: [container]}
installer:
  source: {kind: %s, suite: %s, mirror: %s, variant: %s, components: [%s]}
  packages: [%s]
  layout: {esp: 256MiB, os: 4GiB, minZFS: 1GiB, minDisk: 8GiB}
  afterInstall: poweroff
  hosts:
    - {name: zfs1, mac: "%s", address: 10.0.2.15/24, gateway: 10.0.2.2}
  sshKeys: [%q]
cluster:
  initiator: zfs1
  storage: {pool: %s, driver: %s}
`, rootfstest.Bookworm().Mirror, src.Kind, src.Suite, src.Mirror, src.Variant, strings.Join(src.Components, ", "),
		strings.Join(in.Packages, ", "), mac, sshKey, def.Cluster.Storage.Pool, def.Cluster.Storage.Driver)
	p := filepath.Join(t.TempDir(), "zfs.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// extractOSImage copies os.img out of the stick's payload squashfs.
func extractOSImage(t *testing.T, img, dest string) {
	t.Helper()
	testenv.RequireTools(t, "sgdisk", "unsquashfs")
	payload := gpttest.Extract(t, img, gpttest.Partitions(t, img)[1])
	f, err := os.Create(dest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stderr strings.Builder
	cat := exec.Command("unsquashfs", "-cat", payload, stick.OSImage)
	cat.Stdout, cat.Stderr = f, &stderr
	if err := cat.Run(); err != nil {
		t.Fatalf("unsquashfs -cat %s: %v\n%s", stick.OSImage, err, stderr.String())
	}
	if err := os.Remove(payload); err != nil {
		t.Fatal(err)
	}
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	b, _ := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	return string(b)
}

// freePort is a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
