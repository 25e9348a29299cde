package main

import (
	"bytes"
	"github.com/sovereign-stack/ssbuild/images/gptimage/gpttest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/install"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/images/initramfs/kerneltest"
	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/images/rootfs/rootfstest"
	"github.com/sovereign-stack/ssbuild/internal/testenv"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// A host without an address would make the installer fail on the machine
// (no appliance.yaml); the build refuses it first, naming the host, and
// writes nothing.
func TestInstallerRefusesAHostWithoutAddress(t *testing.T) {
	demo, err := recipes.BuiltinSource("demo")
	if err != nil {
		t.Fatal(err)
	}
	// One host: the recipe itself is valid (a lone host may use DHCP),
	// but the appliance needs an address for every member.
	hosts := "    - {name: demo1, address: 10.99.0.11/24}\n    - {name: demo2, address: 10.99.0.12/24}\n    - {name: demo3, address: 10.99.0.13/24}\n"
	text := strings.Replace(string(demo), hosts, "    - {name: demo3}\n", 1)
	text = strings.Replace(text, "initiator: demo1", "initiator: demo3", 1)
	if text == string(demo) {
		t.Fatal("demo recipe changed: its hosts are not where the test expects")
	}
	rcp := writeFile(t, "r.yaml", text)
	out := filepath.Join(t.TempDir(), "out")
	code, _, stderr := ssbuild(t, "installer", "--recipe", rcp, "--out", out, "--cache", t.TempDir())
	if code == 0 || !strings.Contains(stderr, "demo3") || !strings.Contains(stderr, "step hosts") {
		t.Errorf("exit %d, stderr %q: want a failure of step hosts naming demo3", code, stderr)
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

// buildInstaller runs `ssbuild installer` with the tests' shared rootfs cache.
func buildInstaller(t *testing.T, bin, recipe, out string) (stdout, stderr bytes.Buffer) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(bin, "installer", "--recipe", recipe, "--out", out, "--cache", rootfstest.CacheDir(), "--epoch", "1700000000")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ssbuild installer: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("built in %v: %s", time.Since(start).Round(time.Second), stdout.String())
	return stdout, stderr
}

// staticSSBuild builds bin/ssbuild the way `make build` does (static), the
// binary that becomes the installer's /init.
func staticSSBuild(t *testing.T) string {
	t.Helper()
	testenv.RequireTools(t, "make", "gcc")
	bin := filepath.Join(t.TempDir(), "ssbuild")
	cmd := exec.Command("make", "-C", "../..", "build", "BIN="+bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	return bin
}

// The demo installer, built as a user would: the static binary's
// `ssbuild installer --recipe demo`. Checked with sgdisk, blkid, unsquashfs,
// sha256sum and e2fsck.
func TestInstallerBuildsDemoImage(t *testing.T) {
	rootfstest.Require(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "unsquashfs", "sha256sum", "e2fsck", "mkfs.ext4", "debugfs", "mksquashfs")
	bin := staticSSBuild(t)
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr := buildInstaller(t, bin, "demo", out)

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
	if len(parts) != 2 || parts[0].Name != installer.ESPLabel || parts[0].Code != "EF00" ||
		parts[1].Name != installer.PayloadLabel {
		t.Fatalf("sgdisk -p: %+v, want %s (EF00) and %s", parts, installer.ESPLabel, installer.PayloadLabel)
	}
	if v := runTool(t, "sgdisk", "-v", img); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", v)
	}
	esp := gpttest.Extract(t, img, parts[0])
	if got := runTool(t, "blkid", "-p", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat\n") || !strings.Contains(got, "LABEL="+installer.ESPLabel+"\n") {
		t.Errorf("blkid of the ESP:\n%s", got)
	}
	payload := gpttest.Extract(t, img, parts[1])
	if got := runTool(t, "blkid", "-p", "-o", "value", "-s", "TYPE", payload); strings.TrimSpace(got) != "squashfs" {
		t.Errorf("payload type %q, want squashfs", got)
	}
	x := filepath.Join(t.TempDir(), "x")
	runTool(t, "unsquashfs", "-q", "-n", "-d", x, payload)
	check := exec.Command("sha256sum", "--strict", "-c", installer.PayloadManifest)
	check.Dir = x
	if b, err := check.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c in the payload: %v\n%s", err, b)
	}
	for _, f := range []string{"os.img", "esp/" + hostos.BootLoader, "esp/" + hostos.KernelFile, "esp/" + hostos.InitrdFile,
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
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	b, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b)
}

// The whole path under qemu (TCG) with OVMF: the stick of a one-host recipe
// as a USB device, a blank 80 GiB sparse virtio disk as the target. The
// installer (ssbuild as the initramfs's /init) installs and powers off;
// then sgdisk, blkid, e2fsck and fsck.fat check the target as a user would.
func TestInstallerInstallsAHostInQEMU(t *testing.T) {
	rootfstest.Require(t)
	kerneltest.Require(t)
	testenv.RequireTools(t, "qemu-system-x86_64", "sgdisk", "blkid", "e2fsck", "fsck.fat", "debugfs", "dd", "mdir")
	const ovmfCode, ovmfVars = "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"
	vars, err := os.ReadFile(ovmfVars)
	if err != nil {
		t.Skip(err)
	}
	// One host: the installer needs no MAC or kernel argument to know
	// which host this machine is.
	demo, err := recipes.BuiltinSource("demo")
	if err != nil {
		t.Fatal(err)
	}
	hosts := "    - {name: demo1, address: 10.99.0.11/24}\n    - {name: demo2, address: 10.99.0.12/24}\n    - {name: demo3, address: 10.99.0.13/24}\n"
	if !strings.Contains(string(demo), hosts) {
		t.Fatal("demo recipe changed: its hosts are not where the test expects")
	}
	rcp := writeFile(t, "one-host.yaml", strings.Replace(string(demo), hosts, "    - {name: demo1, address: 10.99.0.11/24}\n", 1))
	bin := staticSSBuild(t)
	out := filepath.Join(t.TempDir(), "out")
	buildInstaller(t, bin, rcp, out)

	tmp := t.TempDir()
	varsCopy := filepath.Join(tmp, "OVMF_VARS.fd")
	if err := os.WriteFile(varsCopy, vars, 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(tmp, "target.raw")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, 80<<30); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	serial, exited := kerneltest.RunQEMU(t, 10*time.Minute, "-m", "1024",
		"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
		"-drive", "if=pflash,format=raw,file="+varsCopy,
		"-device", "qemu-xhci",
		"-drive", "if=none,id=stick,format=raw,snapshot=on,file="+filepath.Join(out, "installer.img"),
		"-device", "usb-storage,drive=stick",
		"-drive", "if=virtio,format=raw,file="+target)
	t.Logf("install under TCG: %v", time.Since(start).Round(time.Second))
	installerLines := kerneltest.Lines(serial, "ssbuild installer")
	if !exited || len(kerneltest.Lines(serial, "FAILED")) > 0 || len(kerneltest.Lines(serial, "payload mounted")) == 0 {
		t.Fatalf("the install did not finish (qemu exited: %v); installer lines:\n%s\nserial tail:\n%s",
			exited, strings.Join(installerLines, "\n"), tail(serial, 4000))
	}
	t.Logf("installer on the serial console:\n%s", strings.Join(installerLines, "\n"))

	parts := gpttest.Partitions(t, target)
	want := []struct{ name, code string }{{install.LabelESP, "EF00"}, {install.LabelOS, "8300"}, {install.LabelZFS, "BF01"}}
	if len(parts) != len(want) {
		t.Fatalf("sgdisk -p of the target: %+v, want %v", parts, want)
	}
	for i, w := range want {
		if parts[i].Name != w.name || parts[i].Code != w.code || parts[i].Start%2048 != 0 {
			t.Errorf("target partition %d: %+v, want %s (%s) on a 1 MiB boundary", i+1, parts[i], w.name, w.code)
		}
	}
	if last := parts[2].End; (last+1)*512 < 80<<30-(2<<20) {
		t.Errorf("the ZFS partition ends at sector %d, not at the end of the 80 GiB disk", last)
	}
	if v := runTool(t, "sgdisk", "-v", target); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v of the target:\n%s", v)
	}
	esp := sparseCopy(t, target, parts[0])
	if got := runTool(t, "blkid", "-p", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat\n") {
		t.Errorf("blkid of the target's ESP:\n%s", got)
	}
	t.Log(runTool(t, "fsck.fat", "-n", esp))
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
	if got := runTool(t, "debugfs", "-R", "cat /etc/ssbuild/appliance.yaml", osPart); !strings.Contains(got, "demo1") {
		t.Errorf("appliance.yaml on the target:\n%s", got)
	}
	if got := runTool(t, "debugfs", "-R", "stat /etc/ssbuild/cluster.secret", osPart); !strings.Contains(got, "Mode:  0600") {
		t.Errorf("cluster.secret on the target is not 0600:\n%s", got)
	}
	if t.Failed() {
		return
	}

	// The target alone, as the host boots once the stick is out: its
	// firmware finds systemd-boot on the ESP's removable-media path, the
	// kernel mounts root=PARTLABEL=ssbuild-os, systemd starts the first-boot
	// unit (its Condition holds: the installer wrote appliance.yaml).
	varsCopy2 := filepath.Join(tmp, "OVMF_VARS-2.fd")
	if err := os.WriteFile(varsCopy2, vars, 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	// systemd colours the unit name and shortens it to fit the line.
	marker := regexp.MustCompile(`Started \S*` + regexp.QuoteMeta(strings.TrimSuffix(hostos.UnitName, "service")))
	serial, found := qemuUntil(t, 6*time.Minute, marker, "-m", "1024",
		"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
		"-drive", "if=pflash,format=raw,file="+varsCopy2,
		"-drive", "if=virtio,format=raw,file="+target)
	if !found {
		t.Fatalf("booting the installed target did not reach %s; serial tail:\n%s", marker, tail(serial, 6000))
	}
	t.Logf("installed target booted to the first-boot unit under TCG in %v:\n%s", time.Since(start).Round(time.Second),
		strings.Join(kerneltest.Lines(serial, "ssbuild-appliance"), "\n"))
}

// qemuUntil boots qemu (TCG, no network, serial on stdout) until the serial
// output matches marker or timeout passes, then kills it by its PID.
func qemuUntil(t *testing.T, timeout time.Duration, marker *regexp.Regexp, args ...string) (serial string, found bool) {
	t.Helper()
	base := []string{"-accel", "tcg", "-machine", "q35", "-nic", "none", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot"}
	cmd := exec.Command("qemu-system-x86_64", append(base, args...)...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited }) // by PID
	deadline := time.After(timeout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for !found {
		select {
		case <-exited:
			return out.String(), marker.MatchString(out.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			return out.String(), false
		case <-tick.C:
			found = marker.MatchString(out.String())
		}
	}
	_ = cmd.Process.Kill()
	return out.String(), true
}

// lockedBuffer collects qemu's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
