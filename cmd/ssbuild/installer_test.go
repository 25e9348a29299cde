package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/hostos"
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
	start := time.Now()
	cmd := exec.Command(bin, "installer", "--recipe", "demo", "--out", out, "--cache", rootfstest.CacheDir(), "--epoch", "1700000000")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ssbuild installer: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("built in %v: %s", time.Since(start).Round(time.Second), stdout.String())

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

	parts := gptParts(t, img)
	if len(parts) != 2 || parts[0].name != installer.ESPLabel || parts[0].code != "EF00" ||
		parts[1].name != installer.PayloadLabel {
		t.Fatalf("sgdisk -p: %+v, want %s (EF00) and %s", parts, installer.ESPLabel, installer.PayloadLabel)
	}
	if v := runTool(t, "sgdisk", "-v", img); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", v)
	}
	esp := extractPart(t, img, parts[0])
	if got := runTool(t, "blkid", "-p", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat\n") || !strings.Contains(got, "LABEL="+installer.ESPLabel+"\n") {
		t.Errorf("blkid of the ESP:\n%s", got)
	}
	payload := extractPart(t, img, parts[1])
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

type gptPart struct {
	start, end int64 // sectors
	code, name string
}

func gptParts(t *testing.T, img string) []gptPart {
	t.Helper()
	var out []gptPart
	for _, line := range strings.Split(runTool(t, "sgdisk", "-p", img), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[0] != strconv.Itoa(len(out)+1) {
			continue
		}
		start, _ := strconv.ParseInt(f[1], 10, 64)
		end, _ := strconv.ParseInt(f[2], 10, 64)
		out = append(out, gptPart{start: start, end: end, code: f[5], name: f[6]})
	}
	return out
}

// extractPart copies a partition into its own file for the tools that read
// a file system from a file.
func extractPart(t *testing.T, img string, p gptPart) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := filepath.Join(t.TempDir(), p.name+".img")
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := io.Copy(o, io.NewSectionReader(f, p.start*512, (p.end-p.start+1)*512)); err != nil {
		t.Fatal(err)
	}
	return out
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	b, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b)
}
