package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// testRecipe is the demo recipe with the static addresses an installer
// needs and MACs.
const testRecipe = `apiVersion: ssbuild/v1
name: demo
installer:
  layout: {esp: 256MiB, os: 8GiB, minZFS: 4GiB, minDisk: 16GiB}
  afterInstall: poweroff
  hosts:
    - {name: demo1, mac: "52:54:00:00:00:01", address: 10.0.0.11/24, gateway: 10.0.0.1}
    - {name: demo2, mac: "52:54:00:00:00:02", address: 10.0.0.12/24, gateway: 10.0.0.1}
cluster:
  initiator: demo1
  storage: {pool: demo, driver: dir}
`

const testSecret = "s3cret-s3cret-s3cret-s3cret-s3cret\n"

// fakePower records what the installer asked for.
type fakePower struct{ calls []string }

func (p *fakePower) Reboot() error   { p.calls = append(p.calls, "reboot"); return nil }
func (p *fakePower) PowerOff() error { p.calls = append(p.calls, "poweroff"); return nil }

type fakeDisk struct {
	name      string
	size      int64
	removable bool
	payload   bool // holds the ssbuild-payload partition
}

// fakeMachine fabricates sysfs, /dev and /proc for a machine whose disks
// are sparse image files under its /dev, and a stick payload for it.
func fakeMachine(t *testing.T, disks ...fakeDisk) (Env, *fakePower) {
	t.Helper()
	root := t.TempDir()
	sys, dev, proc := filepath.Join(root, "sys"), filepath.Join(root, "dev"), filepath.Join(root, "proc")
	write := func(p, data string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range disks {
		b := filepath.Join(sys, "block", d.name)
		write(filepath.Join(b, "size"), fmt.Sprint(d.size/512))
		write(filepath.Join(b, "removable"), map[bool]string{true: "1", false: "0"}[d.removable])
		write(filepath.Join(b, "ro"), "0")
		write(filepath.Join(b, "device/serial"), "SERIAL-"+d.name)
		if d.payload {
			write(filepath.Join(b, d.name+"1/partition"), "1")
			write(filepath.Join(b, d.name+"1/uevent"), "DEVTYPE=partition\nPARTN=1\nPARTNAME="+stick.PayloadLabel+"\n")
		}
		if err := os.MkdirAll(dev, 0o755); err != nil {
			t.Fatal(err)
		}
		sparseDisk(t, dev, d.name, d.size)
		detachLoops(t, filepath.Join(dev, d.name))
	}
	write(filepath.Join(sys, "class/net/enp1s0/address"), "52:54:00:00:00:01\n")
	write(filepath.Join(proc, "cmdline"), "console=ttyS0 quiet\n")
	payload := makePayload(t)
	write(filepath.Join(payload, stick.RecipeName), testRecipe)
	write(filepath.Join(payload, stick.SecretName), testSecret)
	writeManifest(t, payload)
	power := &fakePower{}
	return Env{SysRoot: sys, DevRoot: dev, LoopDevRoot: "/dev", ProcRoot: proc, PayloadDir: payload, WorkDir: t.TempDir(),
		Progress: progress.New(testLog{t}, progress.Plain), Power: power}, power
}

// fingerprint identifies a sparse file's bytes: size, and the offset and
// sha256 of every data extent (holes read as zeros, so equal fingerprints
// mean equal bytes; a write, even of zeros, allocates and shows).
func fingerprint(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, _ := f.Stat()
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", info.Size())
	for off := int64(0); off < info.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "data %d %d\n", data, hole-data)
		if _, err := io.Copy(h, io.NewSectionReader(f, data, hole-data)); err != nil {
			t.Fatal(err)
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil))
}

func blank(t testing.TB, path string) bool {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks == 0
}

// expectedFiles are the files Run writes for demo1, checked here against
// what the first boot reads.
func expectedFiles(t *testing.T, env Env) []File {
	t.Helper()
	r, err := recipes.Load(filepath.Join(env.PayloadDir, stick.RecipeName))
	if err != nil {
		t.Fatal(err)
	}
	files, err := HostFiles(r, []byte(testRecipe), r.Installer.Hosts[0], []byte(testSecret), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		switch f.Path {
		case config.DefaultPath:
			a, err := config.Parse(f.Path, f.Data)
			if err != nil || a.Host.Name != "demo1" || a.Host.Address != "10.0.0.11" || a.SecretFile != hostdisk.SecretPath || a.Cluster.Storage.Source != hostdisk.ZFSSource {
				t.Fatalf("appliance.yaml: %+v, %v", a, err)
			}
		case hostdisk.SecretPath:
			if f.Mode != 0o600 {
				t.Fatalf("secret mode %o", f.Mode)
			}
		}
	}
	return files
}

// TestRunPicksTheRightDisk: two blank disks of different sizes plus the
// stick; the larger disk is installed, the other disk and the stick are
// untouched, and the machine powers off as the recipe says.
func TestRunPicksTheRightDisk(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	env, power := fakeMachine(t,
		fakeDisk{name: "sda", size: 40 * GiB},
		fakeDisk{name: "sdb", size: 80 * GiB},
		fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	stick := fingerprint(t, filepath.Join(env.DevRoot, "sdc"))
	if err := Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	checkInstalled(t, filepath.Join(env.DevRoot, "sdb"), testLayout256(), expectedFiles(t, env))
	if !blank(t, filepath.Join(env.DevRoot, "sda")) {
		t.Error("the smaller disk was written to")
	}
	if fingerprint(t, filepath.Join(env.DevRoot, "sdc")) != stick {
		t.Error("the stick was written to")
	}
	if fmt.Sprint(power.calls) != "[poweroff]" {
		t.Errorf("power: %v, want [poweroff]", power.calls)
	}
}

func testLayout256() recipes.Layout {
	l := testLayout
	l.ESP = recipes.Size(256 * MiB)
	return l
}

// TestRunTamperedPayload: one changed byte in the OS image aborts before
// anything is written.
func TestRunTamperedPayload(t *testing.T) {
	env, power := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	img := filepath.Join(env.PayloadDir, stick.OSImage)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	before := fingerprint(t, filepath.Join(env.DevRoot, "sda"))
	err = Run(context.Background(), env)
	if err == nil || !strings.Contains(err.Error(), "payload os.img: sha256") || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("Run with a tampered payload: %v", err)
	}
	if fingerprint(t, filepath.Join(env.DevRoot, "sda")) != before || !blank(t, filepath.Join(env.DevRoot, "sda")) {
		t.Error("the target changed")
	}
	if len(power.calls) != 0 {
		t.Errorf("power: %v", power.calls)
	}
}

// TestRunRefusesPartitionedDisk: a disk with a GPT is refused without
// wipe, with a message naming the disk, what it holds and how to allow it,
// and its bytes are unchanged.
func TestRunRefusesPartitionedDisk(t *testing.T) {
	testenv.RequireTools(t, "sgdisk", "mkfs.ext4")
	env, _ := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	disk := filepath.Join(env.DevRoot, "sda")
	run(t, "sgdisk", "-o", "-n", "1:2048:+1G", disk)
	before := fingerprint(t, disk)
	err := Run(context.Background(), env)
	var refused *RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), disk) || !strings.Contains(err.Error(), "it holds a GPT partition table;") ||
		!strings.Contains(err.Error(), "installer.wipe: true") {
		t.Fatalf("Run onto a partitioned disk: %v", err)
	}
	t.Log(err)
	if fingerprint(t, disk) != before {
		t.Error("the refused disk changed")
	}
}

// TestRunBench: with ssbuild.bench=dd the install runs, then os.img is
// written once more, dd-style, at the start of the ZFS partition, and both
// times are reported.
func TestRunBench(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	env, _ := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	if err := os.WriteFile(filepath.Join(env.ProcRoot, "cmdline"), []byte("console=ttyS0 "+CmdlineBench+"=dd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(env.ProcRoot, "sys/vm"), 0o755); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	env.Progress = progress.New(io.MultiWriter(&log, testLog{t}), progress.Plain)
	if err := Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(env.DevRoot, "sda")
	if !regexp.MustCompile(`bench: os.img \d+ bytes: install OS write [\d.]+ s \([\d.]+ MiB/s\), dd-equivalent write [\d.]+ s`).MatchString(log.String()) {
		t.Errorf("no bench line in the output:\n%s", log.String())
	}
	parts := sgdiskParts(t, target)
	want, _ := os.ReadFile(filepath.Join(env.PayloadDir, stick.OSImage))
	got := make([]byte, len(want))
	f, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, parts[2].start*512); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the ZFS partition does not start with os.img (%v)", err)
	}
}
