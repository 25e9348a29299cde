package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/gpttest"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/kerneltest"
	"github.com/sovereign-stack/ssbuild/testkit/qemutest"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// A host without an address would make the installer fail on the machine
// (no appliance.yaml); the build refuses it as invalid input before any
// step, naming the host, and writes nothing.
func TestInstallerRefusesAHostWithoutAddress(t *testing.T) {
	demo, err := recipes.BuiltinSource("demo")
	if err != nil {
		t.Fatal(err)
	}
	// One host: the recipe loads (a lone host may use DHCP as far as the
	// document goes), but the appliance needs an address for every member;
	// recipe validate reports it too (config.CheckRecipe).
	hosts := regexp.MustCompile(`(?m)^    - \{name: demo\d, .*\n`)
	text := hosts.ReplaceAllLiteralString(string(demo), "")
	text = strings.Replace(text, "  hosts:\n", "  hosts:\n    - {name: demo3}\n", 1)
	text = strings.Replace(text, "initiator: demo1", "initiator: demo3", 1)
	if text == string(demo) {
		t.Fatal("demo recipe changed: its hosts are not where the test expects")
	}
	rcp := writeFile(t, "r.yaml", text)
	out := filepath.Join(t.TempDir(), "out")
	code, _, stderr := ssbuild(t, "installer", "--recipe", rcp, "--out", out, "--cache", t.TempDir())
	if code != exitInvalid || !strings.Contains(stderr, "host demo3 has no static address") {
		t.Errorf("exit %d, stderr %q: want exit %d naming demo3 before any step", code, stderr, exitInvalid)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output %s exists after a refused build", out)
	}
}

// A dynamically linked ssbuild cannot be the initramfs's /init (no loader
// there): the build says so instead of making a stick whose kernel panics.
// The test binary is this command, dynamically linked (cgo).
func TestInstallerRefusesADynamicBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := exec.Command("file", "-L", self).Output(); !strings.Contains(string(b), "dynamically linked") {
		t.Skipf("the test binary is not dynamically linked: %s", b)
	}
	out := filepath.Join(t.TempDir(), "out")
	code, _, stderr := ssbuild(t, "installer", "--recipe", "demo", "--out", out, "--cache", t.TempDir())
	if code != exitFailed || !strings.Contains(stderr, "dynamically linked") || !strings.Contains(stderr, "make build") {
		t.Errorf("exit %d, stderr %q: want exit %d saying the binary must be static", code, stderr, exitFailed)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output %s exists after a refused build", out)
	}
}

// The demo installer, built as a user would: the static binary's
// `ssbuild installer --recipe demo`. Checked with sgdisk, blkid, unsquashfs,
// sha256sum and e2fsck.
func TestInstallerBuildsDemoImage(t *testing.T) {
	rootfstest.Require(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "unsquashfs", "sha256sum", "e2fsck", "mkfs.ext4", "debugfs", "mksquashfs")
	bin := qemutest.StaticSSBuild(t)
	// The shared trees and layers, but an output cache of this test's own:
	// the first build builds every artifact, a rebuild reuses them.
	cache := t.TempDir()
	for _, d := range []string{"debootstrap", "layers"} {
		os.MkdirAll(filepath.Join(rootfstest.CacheDir(), d), 0o755)
		if err := os.Symlink(filepath.Join(rootfstest.CacheDir(), d), filepath.Join(cache, d)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	start := time.Now()
	stdout, stderr := qemutest.BuildInstallerCache(t, bin, "demo", out, cache, "--json")
	cold := time.Since(start)
	if got := artifactStates(t, stderr.Bytes()); got["os.img"] != "built" || got["esp"] != "built" || got["initramfs"] != "built" {
		t.Errorf("first build with an empty output cache: artifacts %v, want os.img, esp and initramfs built", got)
	}

	ents, _ := os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "SHA256SUMS cluster.secret installer.img" {
		t.Errorf("output folder holds %v", names)
	}
	img := filepath.Join(out, "installer.img")
	sum := exec.Command("sha256sum", "--strict", "-c", "SHA256SUMS")
	sum.Dir = out
	if b, err := sum.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c SHA256SUMS: %v\n%s", err, b)
	}
	// installer.img and cluster.secret both let their reader join the
	// cluster: private to the builder.
	for f, want := range map[string]os.FileMode{".": os.ModeDir | 0o700, "installer.img": 0o600} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, want mode %v", filepath.Join(out, f), err, want)
		}
	}
	secretFile := filepath.Join(out, "cluster.secret")
	fi, err := os.Stat(secretFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cluster.secret: %v, mode %v: want 0600", err, fi.Mode())
	}
	secret, _ := os.ReadFile(secretFile)
	if bytes.Contains(stdout.Bytes(), bytes.TrimSpace(secret)) || bytes.Contains(stderr.Bytes(), bytes.TrimSpace(secret)) {
		t.Error("the cluster secret appears in the command's output")
	}

	parts := gpttest.Partitions(t, img)
	if len(parts) != 2 || parts[0].Name != stick.ESPLabel || parts[0].Code != "EF00" ||
		parts[1].Name != stick.PayloadLabel {
		t.Fatalf("sgdisk -p: %+v, want %s (EF00) and %s", parts, stick.ESPLabel, stick.PayloadLabel)
	}
	if v := runTool(t, "sgdisk", "-v", img); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", v)
	}
	esp := gpttest.Extract(t, img, parts[0])
	if got := runTool(t, "blkid", "-p", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat\n") || !strings.Contains(got, "LABEL="+stick.ESPLabel+"\n") {
		t.Errorf("blkid of the ESP:\n%s", got)
	}
	payload := gpttest.Extract(t, img, parts[1])
	if got := runTool(t, "blkid", "-p", "-o", "value", "-s", "TYPE", payload); strings.TrimSpace(got) != "squashfs" {
		t.Errorf("payload type %q, want squashfs", got)
	}
	x := filepath.Join(t.TempDir(), "x")
	runTool(t, "unsquashfs", "-q", "-n", "-d", x, payload)
	check := exec.Command("sha256sum", "--strict", "-c", stick.Manifest)
	check.Dir = x
	if b, err := check.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c in the payload: %v\n%s", err, b)
	}
	for _, f := range []string{"os.img", "esp/" + stick.BootloaderESP, "esp/" + hostos.KernelFile, "esp/" + hostos.InitrdFile,
		"esp/" + hostos.EntryFile, "recipe.yaml", "cluster.secret"} {
		if _, err := os.Stat(filepath.Join(x, f)); err != nil {
			t.Errorf("payload: %v", err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(x, "cluster.secret")); !bytes.Equal(got, secret) {
		t.Error("the payload's cluster.secret differs from the one kept in the output folder")
	}
	if b, err := exec.Command("e2fsck", "-fn", filepath.Join(x, "os.img")).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn os.img: %v\n%s", err, b)
	}
	if _, err := recipes.Load(filepath.Join(x, "recipe.yaml")); err != nil {
		t.Errorf("payload recipe.yaml does not load: %v", err)
	}

	// Issue 17: what does not carry the secret comes from the output cache
	// when nothing else changed; the stick is written anew with its secret.
	t.Run("rebuild with only a new secret reuses os.img, ESP and initramfs", func(t *testing.T) {
		out2 := filepath.Join(t.TempDir(), "out")
		start := time.Now()
		stdout2, stderr2 := qemutest.BuildInstallerCache(t, bin, "demo", out2, cache, "--json")
		t.Logf("cold build %v, rebuild %v", cold.Round(time.Second), time.Since(start).Round(time.Second))
		want := map[string]string{"rootfs": "reused", "os.img": "reused", "esp": "reused", "initramfs": "reused"}
		if got := artifactStates(t, stderr2.Bytes()); len(got) != len(want) || got["os.img"] != "reused" || got["esp"] != "reused" ||
			got["initramfs"] != "reused" || got["rootfs"] != "reused" {
			t.Errorf("rebuild: artifacts %v, want %v", got, want)
		}
		if !strings.Contains(stdout2.String(), "rootfs reused, os.img reused, esp reused, initramfs reused") {
			t.Errorf("rebuild's summary does not say what was reused:\n%s", stdout2.String())
		}
		img2 := filepath.Join(out2, "installer.img")
		secret2, _ := os.ReadFile(filepath.Join(out2, "cluster.secret"))
		if bytes.Equal(secret2, secret) {
			t.Fatal("the rebuild generated the same secret")
		}
		parts2 := gpttest.Partitions(t, img2)
		x2 := filepath.Join(t.TempDir(), "x")
		runTool(t, "unsquashfs", "-q", "-n", "-d", x2, gpttest.Extract(t, img2, parts2[1]))
		check := exec.Command("sha256sum", "--strict", "-c", stick.Manifest)
		check.Dir = x2
		if b, err := check.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c in the rebuilt payload: %v\n%s", err, b)
		}
		if got, _ := os.ReadFile(filepath.Join(x2, "cluster.secret")); !bytes.Equal(got, secret2) {
			t.Error("the rebuilt payload does not carry the new secret")
		}
		// Same os.img, ESP and initramfs bytes as the cold build: the same
		// manifest lines apart from the secret's, and the same ESP.
		lines := func(dir string) []string {
			b, _ := os.ReadFile(filepath.Join(dir, stick.Manifest))
			var keep []string
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if !strings.HasSuffix(l, "  cluster.secret") {
					keep = append(keep, l)
				}
			}
			return keep
		}
		if a, b := lines(x), lines(x2); strings.Join(a, "\n") != strings.Join(b, "\n") {
			t.Errorf("payload manifests differ beyond the secret:\n%s\n---\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
		}
		if a, b := sha256File(t, esp), sha256File(t, gpttest.Extract(t, img2, parts2[0])); a != b {
			t.Errorf("the stick's ESP (kernel, initramfs) differs: %s, rebuilt %s", a, b)
		}
	})

	// The same inputs (a fixed secret file) give the same stick whether
	// os.img, ESP and initramfs come from the cache or are built afresh.
	t.Run("rebuild from the cache is byte-identical to a build without it", func(t *testing.T) {
		demo, err := recipes.BuiltinSource("demo")
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Replace(string(demo), "cluster:\n", "cluster:\n  secret:\n    file: secret.txt\n", 1)
		rcp := writeFile(t, "r.yaml", text)
		secretFile := filepath.Join(filepath.Dir(rcp), "secret.txt")
		if err := os.WriteFile(secretFile, []byte("Fixed-secret-for-the-byte-compare-0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		fresh, reused := filepath.Join(t.TempDir(), "fresh"), filepath.Join(t.TempDir(), "reused")
		qemutest.BuildInstallerCache(t, bin, rcp, fresh, cache, "--no-output-cache")
		_, stderr := qemutest.BuildInstallerCache(t, bin, rcp, reused, cache, "--json")
		if got := artifactStates(t, stderr.Bytes()); got["os.img"] != "reused" || got["esp"] != "reused" || got["initramfs"] != "reused" {
			t.Errorf("build with the cache: artifacts %v, want os.img, esp and initramfs reused", got)
		}
		if a, b := sha256File(t, filepath.Join(fresh, "installer.img")), sha256File(t, filepath.Join(reused, "installer.img")); a != b {
			t.Errorf("installer.img built afresh %s, from the cache %s: want the same bytes", a, b)
		}
	})

	// A cache entry that no longer matches its recorded sha256 is found,
	// said and built again (from the tree, os.img still reused), never
	// shipped: the stick's ESP is the cold build's.
	t.Run("corrupt initramfs entry is rebuilt", func(t *testing.T) {
		entries, _ := filepath.Glob(filepath.Join(cache, "artifacts", "*", "entry.json"))
		corrupted := false
		for _, e := range entries {
			b, _ := os.ReadFile(e)
			var ent struct{ Kind string }
			if json.Unmarshal(b, &ent) == nil && ent.Kind == "installer-initramfs" {
				p := filepath.Join(filepath.Dir(e), "files", "installer-initrd.img")
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				data[len(data)/2] ^= 0xff
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
				corrupted = true
			}
		}
		if !corrupted {
			t.Fatalf("no installer-initramfs entry among %v", entries)
		}
		out3 := filepath.Join(t.TempDir(), "out")
		start := time.Now()
		_, stderr3 := qemutest.BuildInstallerCache(t, bin, "demo", out3, cache, "--json")
		t.Logf("rebuild after corruption %v", time.Since(start).Round(time.Second))
		got := artifactStates(t, stderr3.Bytes())
		if got["initramfs"] != "rebuilt" || got["os.img"] != "reused" || got["esp"] != "reused" {
			t.Errorf("after corrupting the initramfs entry: artifacts %v, want initramfs rebuilt, os.img and esp reused", got)
		}
		if !strings.Contains(stderr3.String(), "corrupt") {
			t.Error("the build does not say the entry was corrupt")
		}
		img3 := filepath.Join(out3, "installer.img")
		if a, b := sha256File(t, esp), sha256File(t, gpttest.Extract(t, img3, gpttest.Partitions(t, img3)[0])); a != b {
			t.Errorf("the stick's ESP (kernel, initramfs) differs from the cold build's: %s, rebuilt %s", a, b)
		}
	})
}

// artifactStates reads the artifact events of --json progress.
func artifactStates(t *testing.T, events []byte) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(events)), "\n") {
		var ev struct{ Task, Event, State string }
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "artifact" {
			m[ev.Task] = ev.State
		}
	}
	return m
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	b, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b)
}

// The stick of the qemu tests: the demo recipe (three hosts, each with a
// MAC) with a small layout, so sparse disks of a few GiB can be hashed
// whole in seconds.
const (
	macDemo1, macDemo2, macDemo3 = "02:5e:00:00:01:01", "02:5e:00:00:01:02", "02:5e:00:00:01:03"
	macStranger                  = "02:5e:00:00:09:09" // no host has it
	smallDisk                    = 8 << 30             // fits the test layout (minDisk 8 GiB)
	testOSSize                   = 4 << 30
)

func qemuTestRecipe(t *testing.T) string {
	t.Helper()
	demo, err := recipes.BuiltinSource("demo")
	if err != nil {
		t.Fatal(err)
	}
	text := string(demo)
	for _, r := range []struct{ old, new string }{
		{"    esp: 256MiB\n    os: 8GiB\n    minZFS: 4GiB\n    minDisk: 16GiB\n",
			"    esp: 256MiB\n    os: 4GiB\n    minZFS: 1GiB\n    minDisk: 8GiB\n"},
		{`mac: "` + macDemo1 + `"`, `mac: "` + macDemo1 + `"`},
		{`mac: "` + macDemo2 + `"`, `mac: "` + macDemo2 + `"`},
		{`mac: "` + macDemo3 + `"`, `mac: "` + macDemo3 + `"`},
	} {
		if !strings.Contains(text, r.old) {
			t.Fatalf("demo recipe changed: %q is not where the test expects", r.old)
		}
		text = strings.Replace(text, r.old, r.new, 1)
	}
	return writeFile(t, "small-layout.yaml", text)
}

// sha256sum is the sha256 of the whole file, holes read as zeros (Go's
// SHA-NI code: several times faster than coreutils on a sparse 8 GiB disk).
func sha256sum(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 4<<20)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// installOn boots m until the installer powers it off and fails the test
// unless it finished.
func installOn(t *testing.T, m qemutest.Machine) string {
	t.Helper()
	start := time.Now()
	serial, exited := qemutest.Until(t, 10*time.Minute, nil, m.Args(t)...)
	t.Logf("install under TCG: %v", time.Since(start).Round(time.Second))
	lines := installerLines(serial)
	if !exited || len(kerneltest.Lines(serial, "FAILED")) > 0 || !regexp.MustCompile(`installed \S+ onto /dev/`).MatchString(serial) {
		t.Fatalf("the install did not finish (qemu exited: %v); installer lines:\n%s\nserial tail:\n%s",
			exited, strings.Join(lines, "\n"), qemutest.Tail(serial, 4000))
	}
	t.Logf("installer on the serial console:\n%s", strings.Join(lines, "\n"))
	return serial
}

// installerLines are the installer's lines of the serial console: its own
// and the steps' (not the kernel's or the firmware's, nor progress ticks).
func installerLines(serial string) []string {
	re := regexp.MustCompile(`^(ssbuild installer|this machine|target disk|verify payload: (done|FAILED)|write OS .*: (done|FAILED)|/dev/|installed|continuing|firmware boot entry|WARNING|no UEFI|payload sign|bench:|  [A-Za-z])`)
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// refuse boots m until the installer prints FAILED and the marker, then
// kills qemu; it returns the installer's lines.
func refuse(t *testing.T, m qemutest.Machine, marker string) string {
	t.Helper()
	start := time.Now()
	re := regexp.MustCompile(`FAILED: (?s:.*)` + regexp.QuoteMeta(marker))
	serial, found := qemutest.Until(t, 8*time.Minute, re, m.Args(t)...)
	t.Logf("boot to the refusal under TCG: %v", time.Since(start).Round(time.Second))
	if !found {
		t.Fatalf("no FAILED ... %q on the console; serial tail:\n%s", marker, qemutest.Tail(serial, 4000))
	}
	t.Logf("the installer refused:\n%s", strings.Join(installerLines(serial[max(0, strings.Index(serial, "ssbuild installer: FAILED")):]), "\n"))
	return serial[strings.Index(serial, "ssbuild installer"):]
}

// checkInstalled checks the installed target as a user would: sgdisk,
// blkid, e2fsck, fsck.fat, and the host's files in the OS partition.
func checkInstalled(t *testing.T, target string, size int64, host string) {
	t.Helper()
	parts := gpttest.Partitions(t, target)
	want := []struct{ name, code string }{{hostdisk.LabelESP, "EF00"}, {hostdisk.LabelOS, "8300"}, {hostdisk.LabelZFS, "BF01"}}
	if len(parts) != len(want) {
		t.Fatalf("sgdisk -p of the target: %+v, want %v", parts, want)
	}
	for i, w := range want {
		if parts[i].Name != w.name || parts[i].Code != w.code || parts[i].Start%2048 != 0 {
			t.Errorf("target partition %d: %+v, want %s (%s) on a 1 MiB boundary", i+1, parts[i], w.name, w.code)
		}
	}
	if got := (parts[1].End - parts[1].Start + 1) * 512; got != testOSSize {
		t.Errorf("OS partition of %d bytes, want the recipe's 4 GiB", got)
	}
	if last := parts[2].End; (last+1)*512 < size-(2<<20) {
		t.Errorf("the ZFS partition ends at sector %d, not at the end of the %d-byte disk", last, size)
	}
	if v := runTool(t, "sgdisk", "-v", target); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v of the target:\n%s", v)
	}
	esp := sparseCopy(t, target, parts[0])
	if got := runTool(t, "blkid", "-p", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat\n") {
		t.Errorf("blkid of the target's ESP:\n%s", got)
	}
	if b, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n of the ESP: %v\n%s", err, b)
	}
	if got := runTool(t, "mdir", "-i", esp, "::/EFI/BOOT"); !strings.Contains(got, "BOOTX64") {
		t.Errorf("the target's ESP has no EFI/BOOT/BOOTX64.EFI:\n%s", got)
	}
	osPart := sparseCopy(t, target, parts[1])
	if got := runTool(t, "blkid", "-p", "-o", "export", osPart); !strings.Contains(got, "TYPE=ext4\n") {
		t.Errorf("blkid of the OS partition:\n%s", got)
	}
	if b, err := exec.Command("e2fsck", "-fn", osPart).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of the OS partition: %v\n%s", err, b)
	}
	if got := debugfsCat(t, osPart, "/etc/hostname"); strings.TrimSpace(got) != host {
		t.Errorf("/etc/hostname on the target: %q, want %s", got, host)
	}
	yaml := debugfsCat(t, osPart, "/etc/ssbuild/appliance.yaml")
	if a, err := config.Parse("appliance.yaml", []byte(yaml)); err != nil || a.Host.Name != host {
		t.Errorf("appliance.yaml on the target: %v; want host %s:\n%s", err, host, yaml)
	}
	if got := runTool(t, "debugfs", "-R", "stat /etc/ssbuild/cluster.secret", osPart); !strings.Contains(got, "Mode:  0600") {
		t.Errorf("cluster.secret on the target is not 0600:\n%s", got)
	}
}

// debugfsCat is a file of an ext4 image (debugfs's banner goes to stderr).
func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	b, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(b)
}

// The installer under qemu (TCG) with OVMF, against one stick built once
// from a three-host recipe (each host with a MAC) and shared by the cases,
// which run one after the other (each boot takes a core).
func TestInstallerQEMU(t *testing.T) {
	rootfstest.Require(t)
	kerneltest.Require(t)
	testenv.RequireTools(t, "qemu-system-x86_64", "ssh-keygen", "cryptsetup", "sgdisk", "blkid", "e2fsck", "fsck.fat", "debugfs", "dd", "mdir", "mtype", "mcopy", "cp", "unsquashfs", "mksquashfs")
	if _, err := os.Stat(qemutest.OVMFVars); err != nil {
		if testenv.InCI() {
			t.Fatalf("CI=true but %v (install ovmf)", err)
		}
		t.Skip(err)
	}
	bin := qemutest.StaticSSBuild(t)
	out := filepath.Join(t.TempDir(), "out")
	// Signed, as a vendor ships it: the installer checks the payload
	// against the key in its initramfs before it looks at any disk.
	signKey := filepath.Join(t.TempDir(), "vendor_ed25519")
	runTool(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vendor@example", "-f", signKey)
	qemutest.BuildInstaller(t, bin, qemuTestRecipe(t), out, "--sign-key", signKey)
	img := filepath.Join(out, "installer.img")

	// The NIC's MAC is the second host's; two blank disks, the larger
	// second: the installer installs demo2 onto vdb and leaves vda alone.
	// The installed disk then boots alone to the first-boot unit as demo2,
	// with the firmware variables the install left (as a real machine keeps
	// its own): OVMF then boots by BootOrder, so this needs the boot entry
	// the installer wrote.
	t.Run("MAC picks the host and the larger disk is the target", func(t *testing.T) {
		small, large := qemutest.BlankDisk(t, "small.raw", smallDisk+(6<<30)), qemutest.BlankDisk(t, "large.raw", 80<<30)
		vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
		serial := installOn(t, qemutest.Machine{Stick: img, Disks: []string{small, large}, MAC: macDemo2, Vars: vars})
		if !strings.Contains(serial, "this machine is host demo2 (MAC "+macDemo2) || !strings.Contains(serial, "target disk: /dev/vdb") {
			t.Errorf("the console does not say demo2 by MAC onto /dev/vdb")
		}
		if !regexp.MustCompile(`payload signed by vendor@example \(SHA256:[A-Za-z0-9+/]+\)`).MatchString(serial) {
			t.Errorf("the console does not say the payload's signature was checked (vendor@example):\n%s", strings.Join(installerLines(serial), "\n"))
		}
		if !regexp.MustCompile(`firmware boot entry Boot[0-9A-F]{4} "Sovereign Stack \(demo2\)" .* on /dev/vdb\) is first in BootOrder`).MatchString(serial) {
			t.Errorf("the console does not say the installer registered /dev/vdb with the firmware:\n%s", strings.Join(installerLines(serial), "\n"))
		}
		qemutest.NeverWritten(t, small)
		checkInstalled(t, large, 80<<30, "demo2")
		if t.Failed() {
			return
		}
		start := time.Now()
		// The login prompt names the host; before it, systemd started the
		// first-boot unit (it colours the unit name and shortens it to fit).
		started := regexp.MustCompile(`Started \S*` + regexp.QuoteMeta(strings.TrimSuffix(hostos.UnitName, "service")))
		serial, found := qemutest.Until(t, 6*time.Minute, regexp.MustCompile(`demo2 login:`), qemutest.Machine{Disks: []string{large}, Vars: vars}.Args(t)...)
		if !found || !started.MatchString(serial) {
			t.Fatalf("booting the installed target did not reach %s and then demo2's login prompt; serial tail:\n%s", started, qemutest.Tail(serial, 6000))
		}
		t.Logf("installed target booted to the first-boot unit and demo2's login prompt under TCG in %v:\n%s", time.Since(start).Round(time.Second),
			strings.Join(kerneltest.Lines(serial, "ssbuild-appliance"), "\n"))
	})

	// A machine with a whole-disk LUKS2 volume larger than its blank
	// internal disk, and a blank external USB drive (not flagged removable,
	// like most) larger than both: the install goes onto the blank internal
	// disk; the encrypted disk keeps every byte, the USB drive is never written.
	t.Run("LUKS disk and USB drive left alone and the blank internal disk is the target", func(t *testing.T) {
		luks, internal, usb := qemutest.BlankDisk(t, "luks.raw", smallDisk+(2<<30)), qemutest.BlankDisk(t, "internal.raw", smallDisk), qemutest.BlankDisk(t, "usb.raw", smallDisk+(4<<30))
		keyFile := writeFile(t, "luks.key", "not a real key, only a test volume\n")
		runTool(t, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", keyFile, luks)
		before := sha256sum(t, luks)
		serial := installOn(t, qemutest.Machine{Stick: img, Disks: []string{luks, internal}, USB: []string{usb}, MAC: macDemo3})
		if !strings.Contains(serial, "target disk: /dev/vdb") {
			t.Errorf("the target is not the blank internal disk /dev/vdb:\n%s", strings.Join(installerLines(serial), "\n"))
		}
		checkInstalled(t, internal, smallDisk, "demo3")
		if after := sha256sum(t, luks); after != before {
			t.Errorf("the LUKS2 disk changed: sha256 %s before, %s after", before, after)
		}
		qemutest.NeverWritten(t, usb)
	})

	// A machine no host's MAC names: the console lists its MACs, the
	// stick's hosts and how to choose; no disk is touched.
	t.Run("unknown machine is told how to choose and no disk is touched", func(t *testing.T) {
		disk := qemutest.BlankDisk(t, "disk.raw", smallDisk)
		lines := refuse(t, qemutest.Machine{Stick: img, Disks: []string{disk}, MAC: macStranger}, "to choose:")
		for _, want := range []string{macStranger, "demo1 (" + macDemo1 + ")", "demo2 (" + macDemo2 + ")", "demo3 (" + macDemo3 + ")",
			`"install host NAME"`, "installer.hosts[].mac", "no disk was touched"} {
			if !strings.Contains(lines, want) {
				t.Errorf("the console does not say %q:\n%s", want, lines)
			}
		}
		qemutest.NeverWritten(t, disk)
	})

	// A disk holding a partition table and a filesystem, the only disk:
	// refused (the recipe does not say wipe), every byte unchanged.
	t.Run("disk with partitions refused and unchanged", func(t *testing.T) {
		disk := qemutest.BlankDisk(t, "used.raw", smallDisk)
		runTool(t, "sgdisk", "-n", "1:2048:+1G", "-t", "1:8300", "-c", "1:data", disk)
		runTool(t, "dd", "if=/dev/urandom", "of="+disk, "bs=1M", "count=4", "seek=1", "conv=notrunc,fsync", "status=none")
		before := sha256sum(t, disk)
		lines := refuse(t, qemutest.Machine{Stick: img, Disks: []string{disk}, MAC: macDemo1}, "refusing to install onto /dev/vda")
		if !strings.Contains(lines, "wipe") {
			t.Errorf("the refusal does not say how to allow it (wipe):\n%s", lines)
		}
		if after := sha256sum(t, disk); after != before {
			t.Errorf("the refused disk changed: sha256 %s before, %s after", before, after)
		}
	})

	// A byte of a payload file changed, the manifest not: verification
	// fails, the blank target stays blank.
	t.Run("tampered payload leaves the target untouched", func(t *testing.T) {
		tampered := tamperedStick(t, img)
		disk := qemutest.BlankDisk(t, "disk.raw", smallDisk)
		lines := refuse(t, qemutest.Machine{Stick: tampered, Disks: []string{disk}, MAC: macDemo3}, "nothing was written")
		if !strings.Contains(lines, "verify: payload "+stick.ESPDir+"/"+hostos.KernelFile+": sha256 ") || !strings.Contains(lines, "manifest says") {
			t.Errorf("the console does not name the changed file and its wrong sha256:\n%s", lines)
		}
		qemutest.NeverWritten(t, disk)
	})

	// A consistent forgery: the payload rebuilt with a changed recipe (it
	// now wipes disks), SHA256SUMS recomputed and signed, well-formed, by
	// another key. Refused on the signature, naming both keys, before any
	// disk is looked at; the blank target stays blank.
	t.Run("payload re-signed with another key refused before any write", func(t *testing.T) {
		otherKey := filepath.Join(t.TempDir(), "mallory_ed25519")
		runTool(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mallory@example", "-f", otherKey)
		forged := resignedStick(t, img, otherKey)
		disk := qemutest.BlankDisk(t, "disk.raw", smallDisk)
		lines := refuse(t, qemutest.Machine{Stick: forged, Disks: []string{disk}, MAC: macDemo3}, "nothing was written")
		fp := func(key string) string { return strings.Fields(runTool(t, "ssh-keygen", "-l", "-f", key))[1] }
		if want := "SHA256SUMS.sig: made by another key (" + fp(otherKey) + "), not vendor@example (" + fp(signKey) + ")"; !strings.Contains(lines, want) {
			t.Errorf("the console does not say %q:\n%s", want, lines)
		}
		if strings.Contains(lines, "target disk:") {
			t.Errorf("the installer chose a target disk before refusing the signature:\n%s", lines)
		}
		qemutest.NeverWritten(t, disk)
	})

	// The power cut: qemu killed while the OS is being written, then the
	// same machine boots the stick again and the install finishes clean.
	// The machine's MAC is no host's: it is demo1 by the stick's boot menu
	// entry "install host demo1", made the menu's default on a copy of the
	// stick (what the owner picks with the arrow keys).
	t.Run("killed while writing the OS then booted again gives a clean install", func(t *testing.T) {
		disk := qemutest.BlankDisk(t, "disk.raw", smallDisk)
		m := qemutest.Machine{Stick: withDefaultEntry(t, img, "host-demo1"), Disks: []string{disk}, MAC: macStranger}
		midway := regexp.MustCompile(`write OS to /dev/vda: .*\(([2-8]\d)%\)`)
		start := time.Now()
		serial, found := qemutest.Until(t, 8*time.Minute, midway, m.Args(t)...)
		if !found {
			t.Fatalf("the OS write did not get under way; serial tail:\n%s", qemutest.Tail(serial, 4000))
		}
		t.Logf("qemu killed after %v: %s", time.Since(start).Round(time.Second), midway.FindString(serial))
		if parts := gpttest.Partitions(t, disk); len(parts) != 3 {
			t.Fatalf("after the cut the disk has partitions %+v, want the install's three", parts)
		}
		serial = installOn(t, m)
		if !strings.Contains(serial, "continuing the install on /dev/vda") {
			t.Errorf("the second boot did not continue the install")
		}
		if !strings.Contains(serial, "this machine is host demo1 (chosen in the boot menu: ssbuild.host=demo1") {
			t.Errorf("the console does not say demo1 was chosen in the boot menu")
		}
		checkInstalled(t, disk, smallDisk, "demo1")
	})
}

// withDefaultEntry is a copy of stick whose boot menu default is the entry
// with this id (installer.MenuEntryFile) instead of the MAC-matching one.
func withDefaultEntry(t *testing.T, img, id string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "stick.img")
	runTool(t, "cp", "--sparse=always", img, out)
	esp := out + "@@" + strconv.FormatInt(gpttest.Partitions(t, img)[0].Start*512, 10)
	entry := "::/" + installer.MenuEntryFile(id)
	if got := runTool(t, "mtype", "-i", esp, entry); !strings.Contains(got, "ssbuild.host=") {
		t.Fatalf("menu entry %s: %q", entry, got)
	}
	conf := filepath.Join(t.TempDir(), "loader.conf")
	loader := runTool(t, "mtype", "-i", esp, "::/loader/loader.conf")
	loader = regexp.MustCompile(`(?m)^default .*$`).ReplaceAllString(loader, "default "+filepath.Base(installer.MenuEntryFile(id)))
	if err := os.WriteFile(conf, []byte(loader), 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "mcopy", "-o", "-i", esp, conf, "::/loader/loader.conf")
	return out
}

// tamperedStick is a copy of stick whose payload, still a well-formed
// squashfs, holds the target's kernel (esp/ssbuild/vmlinuz) with one byte
// changed: squashfs stores the kernel's already-compressed blocks as they
// are, so the byte is found in the partition by a 4 KiB sample from the
// middle of the file and flipped at its first copy. The manifest then disagrees with
// the file, as with a payload rebuilt with a changed file and the old
// SHA256SUMS.
func tamperedStick(t *testing.T, img string) string {
	t.Helper()
	parts := gpttest.Partitions(t, img)
	payload := gpttest.Extract(t, img, parts[1])
	kernel, err := exec.Command("unsquashfs", "-cat", payload, stick.ESPDir+"/"+hostos.KernelFile).Output()
	if err != nil || len(kernel) < 1<<20 {
		t.Fatalf("unsquashfs -cat the kernel: %v (%d bytes)", err, len(kernel))
	}
	sample := kernel[len(kernel)/2 : len(kernel)/2+4096]
	data, err := os.ReadFile(payload)
	if err != nil {
		t.Fatal(err)
	}
	// The first copy is esp/'s (squashfs writes file data in name order;
	// os.img holds the kernel too, as /boot/vmlinuz-*).
	at := bytes.Index(data, sample)
	if at < 0 {
		t.Fatal("a 4 KiB sample of the kernel is not found uncompressed in the payload")
	}
	out := filepath.Join(t.TempDir(), "tampered.img")
	runTool(t, "cp", "--sparse=always", img, out)
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off := parts[1].Start*512 + int64(at) + 100
	if _, err := f.WriteAt([]byte{sample[100] ^ 0xff}, off); err != nil {
		t.Fatal(err)
	}
	return out
}

// resignedStick is a copy of stick whose payload squashfs is rebuilt with
// recipe.yaml changed (installer.wipe: true), SHA256SUMS updated to match
// and SHA256SUMS.sig made by key with OpenSSH (-n ssbuild): a payload a
// forger could make, consistent in every sum, signed by the wrong key.
// The new squashfs goes where the old one was (it must fit the partition).
func resignedStick(t *testing.T, img, key string) string {
	t.Helper()
	start := time.Now()
	parts := gpttest.Partitions(t, img)
	payload := gpttest.Extract(t, img, parts[1])
	dir := filepath.Join(t.TempDir(), "payload")
	runTool(t, "unsquashfs", "-no-progress", "-no-xattrs", "-d", dir, payload)
	if err := os.Remove(payload); err != nil { // a few hundred MiB of temp space back
		t.Fatal(err)
	}
	recipe := filepath.Join(dir, stick.RecipeName)
	text, err := os.ReadFile(recipe)
	if err != nil || !bytes.Contains(text, []byte("\ninstaller:\n")) {
		t.Fatalf("payload recipe: %v; want an installer: section:\n%s", err, text)
	}
	text = bytes.Replace(text, []byte("\ninstaller:\n"), []byte("\ninstaller:\n  wipe: true\n"), 1)
	if err := os.WriteFile(recipe, text, 0o644); err != nil {
		t.Fatal(err)
	}
	// The recipe's line of the manifest, with its new sum.
	manifest := filepath.Join(dir, stick.Manifest)
	sums, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^[0-9a-f]{64}(  \*?(\./)?` + regexp.QuoteMeta(stick.RecipeName) + `)$`)
	if !line.Match(sums) {
		t.Fatalf("%s does not list %s:\n%s", stick.Manifest, stick.RecipeName, sums)
	}
	sum := sha256.Sum256(text)
	sums = line.ReplaceAll(sums, []byte(hex.EncodeToString(sum[:])+"$1"))
	if err := os.WriteFile(manifest, sums, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, stick.ManifestSig)); err != nil { // ssh-keygen asks before overwriting
		t.Fatal(err)
	}
	runTool(t, "ssh-keygen", "-Y", "sign", "-f", key, "-n", "ssbuild", manifest)
	// Consistent: signed by key, every file as its sum says (what the
	// installer would go on to check were the signer's key not its own).
	pub, err := signature.ReadPublicKey(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := signature.VerifyDir(pub, dir); err != nil || len(v.Unlisted) > 0 {
		t.Fatalf("the forged payload is not consistent: %v (unlisted: %v)", err, v)
	}
	// The build's own options (images/installer writeSquashfs).
	sqfs := filepath.Join(t.TempDir(), "payload.sqfs")
	runTool(t, "mksquashfs", dir, sqfs, "-noappend", "-no-progress", "-quiet", "-b", "1M", "-no-exports", "-no-xattrs", "-all-root",
		"-comp", "zstd", "-Xcompression-level", "3")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(sqfs)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		t.Fatal(err)
	}
	partStart, partSize := parts[1].Start*512, (parts[1].End-parts[1].Start+1)*512
	if info.Size() > partSize {
		t.Fatalf("the rebuilt payload (%d bytes) does not fit its partition (%d bytes)", info.Size(), partSize)
	}
	out := filepath.Join(t.TempDir(), "resigned.img")
	runTool(t, "cp", "--sparse=always", img, out)
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(io.NewOffsetWriter(f, partStart), in); err != nil {
		t.Fatal(err)
	}
	// Zeros after it: nothing of the old squashfs is left in the partition.
	if _, err := f.WriteAt(make([]byte, partSize-info.Size()), partStart+info.Size()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("re-signed stick made in %v", time.Since(start).Round(time.Second))
	return out
}

// sparseCopy copies a partition of a sparse disk image into its own sparse
// file (holes stay holes, so an 8 GiB partition costs what it holds).
func sparseCopy(t *testing.T, img string, p gpttest.Partition) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), p.Name+".img")
	runTool(t, "dd", "if="+img, "of="+out, "bs=4M", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none",
		"skip="+strconv.FormatInt(p.Start*512, 10), "count="+strconv.FormatInt((p.End-p.Start+1)*512, 10))
	return out
}
