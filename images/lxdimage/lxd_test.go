package lxdimage_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestImportAndLaunch imports the container image, split and unified, into
// a real LXD daemon of the test bed and boots a container from each: LXD
// must give the image the fingerprint the manifest predicts, systemd must
// reach RUNNING, the templates must have set the hostname, and a command
// run through the exec API must see the bookworm tree.
func TestImportAndLaunch(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs")
	rootfs := rootfstest.Dir(t)
	addBootFiles(t, rootfs) // imported, not booted: TestVMImage boots one
	out := filepath.Join(t.TempDir(), "image")
	spec := bookwormSpec(rootfs, out)
	spec.Formats = []lxdimage.Format{lxdimage.Container, lxdimage.VM}
	m := build(t, spec)

	h := lxdHost(t)
	c := h.LXD()

	for _, img := range m.Images {
		if img.Type != "container" {
			// LXD cannot run VMs here (no vhost-vsock), but it imports
			// the image and must see a VM image with our fingerprint.
			t.Run(strings.Join(img.Files, "+"), func(t *testing.T) {
				fp := importImage(t, c, out, img.Files)
				image, _, err := c.GetImage(fp)
				if err != nil {
					t.Fatal(err)
				}
				if fp != img.Fingerprint || image.Type != "virtual-machine" {
					t.Errorf("LXD imported %s as %q, manifest predicts %s, virtual-machine", fp, image.Type, img.Fingerprint)
				}
			})
			continue
		}
		name := "c-" + strings.TrimSuffix(strings.ReplaceAll(img.Files[len(img.Files)-1], ".", "-"), "-gz")
		t.Run(strings.Join(img.Files, "+"), func(t *testing.T) {
			fp := importImage(t, c, out, img.Files)
			if fp != img.Fingerprint {
				t.Errorf("LXD fingerprint %s, manifest predicts %s", fp, img.Fingerprint)
			}
			image, _, err := c.GetImage(fp)
			if err != nil {
				t.Fatal(err)
			}
			if image.Type != "container" || image.Properties["release"] != "bookworm" ||
				image.Architecture != m.Architecture || image.CreatedAt.Unix() != epoch {
				t.Errorf("LXD sees type %q, properties %v, architecture %q, created %s",
					image.Type, image.Properties, image.Architecture, image.CreatedAt)
			}
			launch(t, h, fp, name, rootfs)
		})
	}
}

// TestSystemdBoots gives the bookworm tree an init (systemd-sysv, installed
// in a chroot from the Debian mirror) and checks that a container from the
// image boots systemd to a running system, as the base image must.
func TestSystemdBoots(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs")
	rootfs := rootfstest.Dir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	session, err := chroot.Open(ctx, rootfs, chroot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = session.Install(ctx, "systemd-sysv")
	if cerr := session.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("install systemd-sysv: %v", err)
	}
	out := filepath.Join(t.TempDir(), "image")
	m := build(t, bookwormSpec(rootfs, out))
	if !containsPrefix(m.Packages, "systemd-sysv=") {
		t.Errorf("manifest's package list lacks systemd-sysv")
	}
	h := lxdHost(t)
	fp := importImage(t, h.LXD(), out, m.Images[0].Files)
	launch(t, h, fp, "systemd", rootfs)
}

// lxdHost starts a one-host test bed whose default profile puts root disks
// on a dir pool.
func lxdHost(t *testing.T) *testbed.Host {
	t.Helper()
	bed := testbed.New(t, testbed.Options{})
	if err := testbed.UseDirPool(bed.Hosts[0].LXD(), "images"); err != nil {
		t.Fatal(err)
	}
	return bed.Hosts[0]
}

func importImage(t *testing.T, c lxd.InstanceServer, dir string, files []string) string {
	t.Helper()
	fp, err := testbed.ImportImage(c, dir, files...)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// launch creates and starts a container from the image. A debootstrap
// minbase tree has no init; then the container runs sleep as PID 1, which
// still proves LXD unpacked a tree it can start and exec in.
func launch(t *testing.T, h *testbed.Host, fingerprint, name, rootfs string) {
	t.Helper()
	c := h.LXD()
	config := map[string]string{}
	_, err := os.Stat(filepath.Join(rootfs, "sbin/init"))
	hasInit := err == nil
	if !hasInit {
		config["raw.lxc"] = "lxc.init.cmd = /usr/bin/sleep infinity"
	}
	if err := testbed.Launch(c, name, fingerprint, config); err != nil {
		t.Fatalf("%v\n%s", err, tail(filepath.Join(h.LXDDir, "logs", name, "lxc.log")))
	}
	state, _, err := c.GetInstanceState(name)
	if err != nil || state.StatusCode != api.Running {
		t.Fatalf("%s: state %+v, %v; want Running", name, state, err)
	}

	osRelease := inside(t, c, name, "cat", "/etc/os-release")
	if !strings.Contains(osRelease, "VERSION_CODENAME=bookworm") {
		t.Errorf("%s: /etc/os-release:\n%s", name, osRelease)
	}
	if got := strings.TrimSpace(inside(t, c, name, "cat", "/etc/hostname")); got != name {
		t.Errorf("%s: /etc/hostname is %q: the hostname template was not applied", name, got)
	}
	if hosts := inside(t, c, name, "cat", "/etc/hosts"); !strings.Contains(hosts, "127.0.1.1\t"+name) {
		t.Errorf("%s: /etc/hosts does not resolve the instance name:\n%s", name, hosts)
	}
	if !hasInit {
		if comm := strings.TrimSpace(inside(t, c, name, "cat", "/proc/1/comm")); comm != "sleep" {
			t.Errorf("%s: PID 1 is %q, want the sleep init", name, comm)
		}
		return
	}
	// systemd as PID 1 reaching a running (or degraded: no network here)
	// system is what "boots" means for a base image.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sysState, err := testbed.WaitSystemd(ctx, c, name)
	if err != nil {
		t.Error(err)
	}
	if comm := strings.TrimSpace(inside(t, c, name, "cat", "/proc/1/comm")); comm != "systemd" {
		t.Errorf("%s: PID 1 is %q, want systemd", name, comm)
	}
	t.Logf("%s: systemd %s", name, sysState)
}

// inside runs a command in the instance and returns its standard output;
// a non-zero exit is fine (systemctl uses it), a failed exec is not.
func inside(t *testing.T, c lxd.InstanceServer, name string, command ...string) string {
	t.Helper()
	out, _, _, err := lxdexec.Run(c, name, command...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
