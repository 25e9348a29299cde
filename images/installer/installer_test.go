package installer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/testkit/gpttest"

	"github.com/sovereign-stack/ssbuild/images/initramfs"
	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/testkit/kerneltest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const epoch = 1700000000

// inputs are the image's inputs, made once per test binary: the Debian
// kernel and systemd-boot, an initramfs with testinit as /init, and a
// payload of a few files and a directory.
type inputs struct {
	kernel     kerneltest.Tree
	initramfs  string
	payload    []installer.PayloadFile
	payloadDir string
}

var (
	inputsOnce sync.Once
	shared     inputs
	sharedErr  error
	sharedDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

func getInputs(t *testing.T) inputs {
	t.Helper()
	k := kerneltest.Get(t)
	initBin := kerneltest.TestInit(t) // per test: its temp dir; only read in the Once
	inputsOnce.Do(func() {
		sharedErr = func() error {
			var err error
			if sharedDir, err = os.MkdirTemp("", "ssbuild-installer-test-"); err != nil {
				return err
			}
			in := inputs{kernel: k, initramfs: filepath.Join(sharedDir, "initrd.img"),
				payloadDir: filepath.Join(sharedDir, "payload")}
			if _, err := initramfs.Build(context.Background(), initramfs.Spec{Init: initBin, Root: k.Root, Epoch: epoch}, in.initramfs); err != nil {
				return err
			}
			files := map[string]string{
				"os.img":                       strings.Repeat("an OS root filesystem image\n", 200000),
				"recipe.yaml":                  "name: demo\n",
				"appliance.yaml":               "cluster: demo\nsecret: s3cret\n",
				"base-image/metadata.yaml":     "architecture: x86_64\n",
				"base-image/rootfs.squashfs":   strings.Repeat("squash", 100000),
				"base-image/docker/images.tar": "docker archive\n",
			}
			for name, content := range files {
				p := filepath.Join(in.payloadDir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					return err
				}
			}
			for _, n := range []string{"os.img", "recipe.yaml", "appliance.yaml", "base-image"} {
				in.payload = append(in.payload, installer.PayloadFile{Name: n, Path: filepath.Join(in.payloadDir, n)})
			}
			shared = in
			return nil
		}()
	})
	if sharedErr != nil {
		t.Fatalf("test inputs: %v", sharedErr)
	}
	return shared
}

func (in inputs) spec(out, cmdline string) installer.Spec {
	return installer.Spec{Name: "demo", Epoch: epoch, Kernel: in.kernel.Vmlinuz(), Initramfs: in.initramfs,
		SystemdBoot: in.kernel.SystemdBoot(), Cmdline: cmdline, Payload: in.payload, Output: out}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	testenv.RequireTools(t, name)
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C") // listings in golden files
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// testCmdline: the serial console for the test to read, and the USB
// stick the test init must see, and its partitions it mounts and lists.
const testCmdline = "console=tty0 console=ttyS0,115200 panic=-1 ssbuild.expect=sda ssbuild.mount=sda1:vfat,sda2:squashfs"

func TestImage(t *testing.T) {
	in := getInputs(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "installer.img")
	start := time.Now()
	res, err := installer.Build(context.Background(), in.spec(out, testCmdline))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image: %d bytes (ESP %d, payload %d) in %v", res.Size, res.ESPSize, res.PayloadSize, time.Since(start).Round(time.Millisecond))
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("output folder holds %v, want the image and SHA256SUMS only (no temporary files)", ents)
	}

	parts := gpttest.Partitions(t, out)
	t.Run("layout", func(t *testing.T) {
		want := []gpttest.Partition{
			{Start: 2048, Code: "EF00", Name: stick.ESPLabel},
			{Start: 2048 + res.ESPSize/512, Code: "8300", Name: stick.PayloadLabel},
		}
		if len(parts) != len(want) {
			t.Fatalf("sgdisk -p shows %d partitions, want 2: %+v", len(parts), parts)
		}
		for i, w := range want {
			if p := parts[i]; p.Start != w.Start || p.Code != w.Code || p.Name != w.Name {
				t.Errorf("partition %d: %+v, want start %d, type %s, name %s", i+1, p, w.Start, w.Code, w.Name)
			}
		}
		if v := run(t, "sgdisk", "-v", out); !strings.Contains(v, "No problems found") {
			t.Errorf("sgdisk -v:\n%s", v)
		}
		if got := run(t, "blkid", "-p", "-o", "value", "-s", "PTTYPE", out); strings.TrimSpace(got) != "gpt" {
			t.Errorf("blkid: partition table %q, want gpt", got)
		}
	})

	t.Run("ESP", func(t *testing.T) {
		esp := gpttest.Extract(t, out, parts[0])
		got := run(t, "blkid", "-p", "-o", "export", esp)
		for _, w := range []string{"TYPE=vfat", "VERSION=FAT32", "LABEL=" + stick.ESPLabel} {
			if !strings.Contains(got, w+"\n") {
				t.Errorf("blkid of the ESP lacks %s:\n%s", w, got)
			}
		}
		// fsck.fat exits non-zero for anything it would fix.
		t.Log(run(t, "fsck.fat", "-n", esp))
		for name, want := range map[string]string{
			"EFI/BOOT/BOOTX64.EFI": sha256Of(t, in.kernel.SystemdBoot()),
			installer.KernelFile:   sha256Of(t, in.kernel.Vmlinuz()),
			installer.InitrdFile:   sha256Of(t, in.initramfs),
		} {
			copied := filepath.Join(t.TempDir(), "f")
			run(t, "mcopy", "-i", esp, "::/"+name, copied)
			if got := sha256Of(t, copied); got != want {
				t.Errorf("%s on the ESP (mcopy) differs from its source", name)
			}
		}
		entry := run(t, "mtype", "-i", esp, "::/"+installer.EntryFile)
		for _, w := range []string{"linux /" + installer.KernelFile, "initrd /" + installer.InitrdFile, "options " + testCmdline} {
			if !strings.Contains(entry, w+"\n") {
				t.Errorf("boot entry lacks %q:\n%s", w, entry)
			}
		}
	})

	t.Run("payload", func(t *testing.T) {
		payload := gpttest.Extract(t, out, parts[1])
		if got := run(t, "blkid", "-p", "-o", "value", "-s", "TYPE", payload); strings.TrimSpace(got) != "squashfs" {
			t.Errorf("blkid: payload type %q, want squashfs", got)
		}
		x := filepath.Join(t.TempDir(), "x")
		run(t, "unsquashfs", "-q", "-n", "-d", x, payload)
		cmd := exec.Command("sha256sum", "--strict", "-c", stick.Manifest)
		cmd.Dir = x
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c %s in the payload: %v\n%s", stick.Manifest, err, b)
		}
		manifest, _ := os.ReadFile(filepath.Join(x, stick.Manifest))
		var files []string
		filepath.WalkDir(x, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && d.Name() != stick.Manifest {
				rel, _ := filepath.Rel(x, p)
				files = append(files, rel)
			}
			return err
		})
		if n := strings.Count(string(manifest), "\n"); n != len(files) || len(files) != 6 {
			t.Errorf("manifest has %d lines for %d files (want 6):\n%s", n, len(files), manifest)
		}
		for _, f := range files {
			if !strings.Contains(string(manifest), "  "+f+"\n") {
				t.Errorf("manifest lacks %s", f)
			}
		}
	})

	t.Run("SHA256SUMS", func(t *testing.T) {
		cmd := exec.Command("sha256sum", "--strict", "-c", signature.ChecksumsFile)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "installer.img: OK") {
			t.Errorf("sha256sum -c: %v\n%s", err, b)
		}
	})

	t.Run("reproducible", func(t *testing.T) {
		again := filepath.Join(t.TempDir(), "installer.img")
		res2, err := installer.Build(context.Background(), in.spec(again, testCmdline))
		if err != nil {
			t.Fatal(err)
		}
		if res2.SHA256 != res.SHA256 || sha256Of(t, again) != sha256Of(t, out) {
			t.Errorf("two builds differ: %s vs %s", res.SHA256, res2.SHA256)
		}
		other := in.spec(filepath.Join(t.TempDir(), "other.img"), testCmdline)
		other.Name = "other"
		res3, err := installer.Build(context.Background(), other)
		if err != nil {
			t.Fatal(err)
		}
		if res3.IDs.Disk == res.IDs.Disk {
			t.Errorf("images named differently share the disk GUID %s", res.IDs.Disk)
		}
	})

	t.Run("boots from USB under OVMF", func(t *testing.T) {
		testenv.RequireTools(t, "qemu-system-x86_64")
		code := "/usr/share/OVMF/OVMF_CODE.fd"
		vars, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS.fd")
		if err != nil {
			if testenv.InCI() {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		tmp := t.TempDir()
		varsCopy := filepath.Join(tmp, "OVMF_VARS.fd")
		if err := os.WriteFile(varsCopy, vars, 0o644); err != nil {
			t.Fatal(err)
		}
		// A copy: the firmware may write to the stick (systemd-boot's
		// random seed), and the other subtests read the image.
		stickImg := filepath.Join(tmp, "stick.img")
		run(t, "cp", "--sparse=always", out, stickImg)
		serial, exited := kerneltest.RunQEMU(t, 4*time.Minute,
			"-drive", "if=pflash,format=raw,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,file="+varsCopy,
			"-device", "qemu-xhci",
			"-drive", "if=none,id=stick,format=raw,file="+stickImg,
			"-device", "usb-storage,drive=stick")
		for _, l := range kerneltest.Lines(serial, "testinit:") {
			t.Log("guest: " + l)
		}
		// The kernel echoes the command line: ours, from the entry on the
		// ESP, means systemd-boot read our loader configuration.
		if got := kerneltest.Lines(serial, "Command line:"); len(got) == 0 || !strings.Contains(got[0], testCmdline) {
			t.Errorf("kernel command line %q, want the entry's %q", got, testCmdline)
		}
		if !strings.Contains(serial, kerneltest.InitMarker+" kernel="+in.kernel.Version) {
			t.Fatalf("the guest never printed %s from our init; serial console:\n%s", kerneltest.InitMarker, serial)
		}
		if got := kerneltest.Lines(serial, "testinit: block devices:"); len(got) != 1 || !strings.Contains(got[0], "sda") {
			t.Errorf("the init did not see the USB stick as sda: %q", got)
		}
		// The stick's file systems, found by their GPT names and mounted
		// by the installer's kernel with the initramfs's modules.
		for _, want := range []string{"mounted sda1 (vfat, PARTNAME=" + stick.ESPLabel + "): EFI loader ssbuild",
			"mounted sda2 (squashfs, PARTNAME=" + stick.PayloadLabel + "): " +
				stick.Manifest + " appliance.yaml base-image os.img recipe.yaml"} {
			if len(kerneltest.Lines(serial, want)) != 1 {
				t.Errorf("the guest did not print %q; serial console:\n%s", want, serial)
			}
		}
		if !exited {
			t.Errorf("the guest did not power off")
		}
	})
}

// A failed build leaves neither the image, nor SHA256SUMS, nor its
// temporary work folder in the output folder.
func TestFailedBuildLeavesNothing(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "mkfifo")
	in := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(in, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := installer.Spec{Name: "x", Epoch: epoch, Kernel: file("vmlinuz"), Initramfs: file("initrd.img"),
		SystemdBoot: file("systemd-bootx64.efi")}
	fifoDir := filepath.Join(in, "with-fifo")
	if err := os.Mkdir(fifoDir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfifo", filepath.Join(fifoDir, "pipe"))

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	sign := func([]byte) ([]byte, error) { return []byte("sig"), nil }
	failSign := func([]byte) ([]byte, error) { return nil, errors.New("no key") }
	for _, c := range []struct {
		name    string
		payload []installer.PayloadFile
		want    string
		ctx     context.Context
		sign    func([]byte) ([]byte, error)
		sigName string
	}{
		{"cancelled", []installer.PayloadFile{{Name: "recipe.yaml", Path: file("recipe.yaml")}}, "context canceled", cancelled, nil, ""},
		{"missing payload file", []installer.PayloadFile{{Name: "os.img", Path: filepath.Join(in, "nope")}}, "payload os.img", nil, nil, ""},
		{"name with a slash", []installer.PayloadFile{{Name: "a/b", Path: file("recipe.yaml")}}, `payload name "a/b"`, nil, nil, ""},
		{"manifest name taken", []installer.PayloadFile{{Name: stick.Manifest, Path: file("recipe.yaml")}}, "reserved", nil, nil, ""},
		{"special file in a folder", []installer.PayloadFile{{Name: "base-image", Path: fifoDir}}, "base-image/pipe", nil, nil, ""},
		{"signature name taken", []installer.PayloadFile{{Name: "SHA256SUMS.sig", Path: file("recipe.yaml")}}, "reserved", nil, sign, "SHA256SUMS.sig"},
		{"signature without a name", []installer.PayloadFile{{Name: "recipe.yaml", Path: file("recipe.yaml")}}, "manifest signature name", nil, sign, ""},
		{"signing fails", []installer.PayloadFile{{Name: "recipe.yaml", Path: file("recipe.yaml")}}, "sign SHA256SUMS: no key", nil, failSign, "SHA256SUMS.sig"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			spec := base
			spec.Payload, spec.Output = c.payload, filepath.Join(out, "installer.img")
			spec.SignManifest, spec.ManifestSigName = c.sign, c.sigName
			ctx := c.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			_, err := installer.Build(ctx, spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one mentioning %q", err, c.want)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("output folder holds %v after a failed build", ents)
			}
		})
	}
}
