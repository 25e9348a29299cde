package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestHotplugBus classifies sysfs device paths of the shapes the kernel
// makes (a table over a sysfs root of symlinks), and a real loop device of
// this machine.
func TestHotplugBus(t *testing.T) {
	sys := t.TempDir()
	for name, dev := range map[string]string{
		"sda":     "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
		"sdb":     "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
		"nvme0n1": "devices/pci0000:00/0000:00:1d.0/0000:03:00.0/nvme/nvme0/nvme0n1",
		"mmcblk0": "devices/pci0000:00/0000:00:1a.0/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0",
		"sdd":     "devices/pci0000:00/0000:00:1c.0/0000:04:00.0/fw0/fw0.0/host7/target7:0:0/7:0:0:0/block/sdd",
		"vda":     "devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
		"loop0":   "devices/virtual/block/loop0",
	} {
		if err := os.MkdirAll(filepath.Join(sys, dev), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..", dev), filepath.Join(sys, "block", name)); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{"sda": "", "sdb": "usb", "nvme0n1": "", "mmcblk0": "mmc", "sdd": "firewire", "vda": "", "loop0": "", "gone": ""}
	for name, bus := range want {
		if got := HotplugBus(sys, name); got != bus {
			t.Errorf("%s: %q, want %q", name, got, bus)
		}
	}

	// This machine's sysfs: a loop device is virtual, on no hot-pluggable bus.
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "losetup")
	img := sparseDisk(t, t.TempDir(), "loop.img", 64*MiB)
	detachLoops(t, img)
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", img))
	name := filepath.Base(dev)
	resolved, err := filepath.EvalSymlinks("/sys/block/" + name)
	if err != nil || !strings.Contains(resolved, "/devices/virtual/block/") {
		t.Fatalf("/sys/block/%s resolves to %q (%v)", name, resolved, err)
	}
	if got := HotplugBus("/sys", name); got != "" {
		t.Errorf("real %s: %q, want none", name, got)
	}
	// The same shape with the kernel's usb path in front is USB.
	if got := HotplugBus(sys, "sdb"); got != "usb" {
		t.Errorf("sdb: %q", got)
	}
}

// TestSelectHotplug: auto never takes a disk on USB or SD/MMC, even the
// largest and even when its removable flag is 0; an explicit serial does.
func TestSelectHotplug(t *testing.T) {
	boot := map[string]bool{"sdb": true}
	ds := machine()
	ds[1].Hotplug = "usb" // the 1 TiB disk sits in a USB-SATA enclosure
	got, err := SelectTarget(ds, boot, Choice{}, nil)
	if err != nil || got.Name != "nvme0n1" {
		t.Fatalf("auto: %v %v, want nvme0n1", got.Name, err)
	}
	ds[0].Hotplug, ds[2].Hotplug = "mmc", "usb"
	_, err = SelectTarget(ds, boot, Choice{}, nil)
	if err == nil || !strings.Contains(err.Error(), "/dev/nvme1n1 (on usb, hot-pluggable)") || !strings.Contains(err.Error(), "/dev/nvme0n1 (on mmc, hot-pluggable)") {
		t.Fatalf("all on hot-pluggable buses: %v", err)
	}
	got, err = SelectTarget(ds, boot, Choice{Target: recipes.Target{Serial: "S5GXNF0R2"}}, nil)
	if err != nil || got.Name != "nvme1n1" {
		t.Fatalf("explicit serial of the USB disk: %v %v", got.Name, err)
	}
}

// TestRunRefusesForeignJournal: a disk whose only content is the install
// journal of another payload, or of this payload for another host, is
// refused like any data, and left as it was.
func TestRunRefusesForeignJournal(t *testing.T) {
	testenv.RequireTools(t, "mkfs.ext4")
	for _, tc := range []struct{ name, payload, host string }{
		{"another payload", strings.Repeat("0", 64), "demo1"},
		{"another host", "", "demo2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, _ := fakeMachine(t, fakeDisk{name: "sda", size: 20 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
			p, err := ReadManifest(env.PayloadDir)
			if err != nil {
				t.Fatal(err)
			}
			disk := filepath.Join(env.DevRoot, "sda")
			f, err := os.OpenFile(disk, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			j := Journal{Payload: tc.payload, Host: tc.host, Step: StepOSWritten}
			if j.Payload == "" {
				j.Payload = p.Digest
			}
			if err := writeJournal(f, j); err != nil {
				t.Fatal(err)
			}
			f.Close()
			before := fingerprint(t, disk)
			err = Run(context.Background(), env)
			var refused *RefusedError
			if !errors.As(err, &refused) || !strings.Contains(err.Error(), "another install's journal") {
				t.Fatalf("Run: %v", err)
			}
			if fingerprint(t, disk) != before {
				t.Error("the refused disk changed")
			}
		})
	}
}

// TestRunSwappedDisk: the target (a loop device) is chosen, then another
// disk is put behind the same name before the first write (the loop
// device detached and attached to another file): the install stops, and
// the new disk is untouched.
func TestRunSwappedDisk(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "losetup", "mkfs.ext4", "sgdisk")
	for _, tc := range []struct {
		name string
		size int64
		make func(img string)
	}{
		{"same size, holds a filesystem", 20 * GiB, func(img string) { run(t, "mkfs.ext4", "-q", "-F", img) }},
		{"blank, another size", 21 * GiB, func(string) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, power := fakeMachine(t, fakeDisk{name: "sda", size: 20 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
			dir := t.TempDir()
			chosen := sparseDisk(t, dir, "chosen.img", 20*GiB)
			other := sparseDisk(t, dir, "other.img", tc.size)
			tc.make(other)
			// Settle the file's extents (delayed allocation), so the
			// fingerprint compares bytes, not the state of the page cache.
			run(t, "sync", other)
			detachLoops(t, chosen)
			detachLoops(t, other)
			loop := strings.TrimSpace(run(t, "losetup", "-f", "--show", chosen))
			sda := filepath.Join(env.DevRoot, "sda")
			if err := os.Remove(sda); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(loop, sda); err != nil {
				t.Fatal(err)
			}
			before := fingerprint(t, other)
			var log strings.Builder
			env.Progress = progress.New(io.MultiWriter(&log, testLog{t}), progress.Plain)
			env.BeforeInstall = func(target Disk) error {
				if target.Path != sda {
					return fmt.Errorf("chose %s", target.Path)
				}
				run(t, "losetup", "-d", loop)
				// The kernel frees the name asynchronously.
				for i := 0; ; i++ {
					_, err := runErr("losetup", loop, other)
					if err == nil {
						return nil
					}
					if i == 50 {
						return err
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			err := Run(context.Background(), env)
			if err == nil || !strings.Contains(err.Error(), "the disk changed since it was chosen") || !strings.Contains(err.Error(), "nothing was written") {
				t.Fatalf("Run: %v", err)
			}
			t.Log(err)
			// Reading through the loop device leaves zero pages of the
			// file's unwritten extents (mkfs made them) in the page
			// cache, which SEEK_DATA then counts as data: detach, drop
			// them, and the fingerprint compares the bytes again.
			run(t, "losetup", "-d", loop)
			dropCache(t, other)
			if fingerprint(t, other) != before {
				t.Error("the swapped-in disk changed")
			}
			if !blank(t, chosen) {
				t.Error("the chosen disk was written to")
			}
			if len(power.calls) != 0 {
				t.Errorf("power: %v", power.calls)
			}
		})
	}
}

// TestDisksSettled: a disk that appears while the installer waits is in the
// list it returns; the wait ends once the list stays the same, and is
// bounded when it never does.
func TestDisksSettled(t *testing.T) {
	sys := t.TempDir()
	add := func(name string) {
		if err := os.MkdirAll(filepath.Join(sys, "block", name), 0o755); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(filepath.Join(sys, "block", name, "size"), []byte("1000\n"), 0o644); err != nil {
			t.Error(err)
		}
	}
	add("sdc")
	go func() {
		time.Sleep(300 * time.Millisecond)
		add("sda")
	}()
	began := time.Now()
	names, ok := DisksSettled(context.Background(), sys, 500*time.Millisecond, 50*time.Millisecond, 5*time.Second)
	if !ok || fmt.Sprint(names) != "[sda sdc]" {
		t.Fatalf("settled %v: %v", ok, names)
	}
	if d := time.Since(began); d < 800*time.Millisecond || d > 3*time.Second {
		t.Errorf("took %s; want the late disk's 300 ms plus 500 ms quiet", d)
	}
	// The writer is waited for: a write racing t.TempDir's cleanup fails it.
	stop, done := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-done }()
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
				add(fmt.Sprintf("sdx%d", i))
			}
		}
	}()
	began = time.Now()
	if _, ok := DisksSettled(context.Background(), sys, 500*time.Millisecond, 50*time.Millisecond, time.Second); ok {
		t.Error("an ever-changing list settled")
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("unbounded wait: %s", d)
	}
}

// TestInstallVerifiesESPFiles: a boot file that changes on the stick after
// the payload was verified fails the ESP step, naming it, instead of
// landing on the target.
func TestInstallVerifiesESPFiles(t *testing.T) {
	testenv.RequireTools(t, "mkfs.ext4", "sgdisk")
	p, err := VerifyPayload(makePayload(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.Path(stick.ESPDir+"/vmlinuz"), []byte("fake kernel, changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := sparseDisk(t, t.TempDir(), "d.img", 20*GiB)
	err = Install(context.Background(), p, Plan{Target: img, Layout: testLayout, Host: "nuc1"}, Options{})
	if err == nil || !strings.Contains(err.Error(), StepESPWritten) || !strings.Contains(err.Error(), "esp/vmlinuz read back from the stick with sha256") {
		t.Fatalf("Install with a changed kernel: %v", err)
	}
	if j, _, _ := ReadJournal(img); j.Completed(StepESPWritten) {
		t.Errorf("journal records %s", j.Step)
	}
}

// TestRunWipeSaysWhatItErases: with installer.wipe the console says which
// disk is erased and what it held, before the install.
func TestRunWipeSaysWhatItErases(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "mkfs.ext4", "losetup", "e2fsck")
	env, _ := fakeMachine(t, fakeDisk{name: "sda", size: 20 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	recipe := strings.Replace(testRecipe, "  afterInstall: poweroff\n", "  afterInstall: poweroff\n  wipe: true\n", 1)
	if err := os.WriteFile(filepath.Join(env.PayloadDir, stick.RecipeName), []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, env.PayloadDir)
	disk := filepath.Join(env.DevRoot, "sda")
	run(t, "mkfs.ext4", "-q", "-F", disk)
	var log strings.Builder
	env.Progress = progress.New(io.MultiWriter(&log, testLog{t}), progress.Plain)
	if err := Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	out := log.String()
	erase := strings.Index(out, "installer.wipe is true: ERASING "+disk+" (20.0 GiB, serial SERIAL-sda), which holds an ext4 filesystem (ext4)")
	write := strings.Index(out, StepPartitioned)
	if erase < 0 || write < 0 || erase > write {
		t.Errorf("no erase notice before the install:\n%s", out)
	}
}

func dropCache(t testing.TB, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

func runErr(name string, args ...string) (string, error) {
	return command.Output(context.Background(), name, args...)
}
