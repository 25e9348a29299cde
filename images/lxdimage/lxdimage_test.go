package lxdimage_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const epoch = 1700000000

func bookwormSpec(rootfs, out string) lxdimage.Spec {
	return lxdimage.Spec{
		RootFS:      rootfs,
		OutDir:      out,
		Epoch:       epoch,
		Compression: "gzip", // the tests' time goes to LXD, not to xz
		Properties:  lxdimage.Properties{OS: "debian", Release: "bookworm", Description: "ssbuild test image"},
		Inputs:      []lxdimage.Input{{Name: "rootfs", Detail: "debootstrap bookworm minbase"}},
	}
}

// build runs Build and checks what a user checks first: the folder holds
// exactly the files SHA256SUMS lists, and `sha256sum -c` agrees.
func build(t *testing.T, spec lxdimage.Spec) *lxdimage.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := lxdimage.Build(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %s", filepath.Base(spec.OutDir), time.Since(start).Round(time.Millisecond))
	cmd := exec.Command("sha256sum", "-c", "--strict", signature.ChecksumsFile)
	cmd.Dir = spec.OutDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}
	listed := strings.Count(string(out), ": OK")
	entries, _ := os.ReadDir(spec.OutDir)
	if listed != len(entries)-1 { // all but SHA256SUMS itself
		t.Errorf("SHA256SUMS checks %d files, the folder has %d besides it:\n%s", listed, len(entries)-1, out)
	}
	return m
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func readManifest(t *testing.T, dir string) lxdimage.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, imagedir.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m lxdimage.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	return m
}

// TestContainerImageReproducible builds the container image from two copies
// of the shared bookworm tree (other ctimes, atimes and directory order, as
// on two machines) with one epoch: every artifact must be byte-identical,
// and the content must be the tree's (owners, device nodes, times).
func TestContainerImageReproducible(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "unsquashfs", "sha256sum", "tar")
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	ma := build(t, bookwormSpec(rootfstest.Dir(t), a))
	build(t, bookwormSpec(rootfstest.Dir(t), b))

	for _, name := range []string{imagedir.MetadataFile, imagedir.SquashfsFile, imagedir.UnifiedFile,
		imagedir.ManifestFile, signature.ChecksumsFile} {
		if ha, hb := sha256Of(t, filepath.Join(a, name)), sha256Of(t, filepath.Join(b, name)); ha != hb {
			t.Errorf("%s differs between two builds: %s vs %s", name, ha, hb)
		}
	}

	t.Run("manifest", func(t *testing.T) {
		m := readManifest(t, a)
		if m.SourceDateEpoch != epoch || m.Architecture == "" || len(m.Inputs) != 1 {
			t.Errorf("manifest: epoch %d, arch %q, inputs %v", m.SourceDateEpoch, m.Architecture, m.Inputs)
		}
		if len(m.Outputs) != 3 {
			t.Errorf("manifest lists outputs %+v, want metadata, squashfs, unified", m.Outputs)
		}
		for _, o := range m.Outputs {
			if got := sha256Of(t, filepath.Join(a, o.File)); got != o.SHA256 {
				t.Errorf("manifest says %s has sha256 %s, it has %s", o.File, o.SHA256, got)
			}
		}
		if !strings.HasPrefix(m.Tools["mksquashfs"], "mksquashfs version") {
			t.Errorf("mksquashfs version recorded as %q", m.Tools["mksquashfs"])
		}
		if !containsPrefix(m.Packages, "base-files=12") || !containsPrefix(m.Packages, "dpkg=") {
			t.Errorf("package list lacks base-files 12 / dpkg: %d packages", len(m.Packages))
		}
		if len(ma.Images) != 2 {
			t.Errorf("fingerprints for %d images, want 2 (split, unified)", len(ma.Images))
		}
	})

	t.Run("squashfs keeps owners, devices, and stamps the epoch", func(t *testing.T) {
		out, err := exec.Command("unsquashfs", "-lln", filepath.Join(a, imagedir.SquashfsFile)).Output()
		if err != nil {
			t.Fatal(err)
		}
		listing := string(out)
		for _, want := range []string{
			" 0/42 ",            // /etc/shadow keeps its group (shadow)
			"squashfs-root/dev", // device nodes from debootstrap, if any
		} {
			if !strings.Contains(listing, want) {
				t.Errorf("unsquashfs -lln lacks %q", want)
			}
		}
		if !strings.Contains(line(listing, "squashfs-root/etc/shadow"), " 0/42 ") {
			t.Errorf("/etc/shadow: %q, want owner 0/42", line(listing, "squashfs-root/etc/shadow"))
		}
		if !strings.HasPrefix(line(listing, "squashfs-root/dev/null"), "crw-rw-rw-") {
			t.Errorf("/dev/null: %q, want a character device", line(listing, "squashfs-root/dev/null"))
		}
		stat, err := exec.Command("unsquashfs", "-s", filepath.Join(a, imagedir.SquashfsFile)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(stat), "Creation or last append time Tue Nov 14 22:13:20 2023") {
			t.Errorf("squashfs creation time is not the epoch:\n%s", stat)
		}
	})

	t.Run("unified tarball layout", func(t *testing.T) {
		out, err := exec.Command("tar", "-tvzf", filepath.Join(a, imagedir.UnifiedFile), "--numeric-owner",
			"--full-time").Output()
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if !strings.HasSuffix(lines[0], " metadata.yaml") {
			t.Errorf("first entry %q, want metadata.yaml", lines[0])
		}
		for _, want := range []string{" templates/hostname.tpl", " templates/hosts.tpl", " rootfs/etc/os-release", " rootfs/usr/bin/bash"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("unified tarball lacks%s", want)
			}
		}
		if got := line(string(out), "rootfs/etc/shadow"); !strings.Contains(got, " 0/42 ") {
			t.Errorf("rootfs/etc/shadow: %q, want owner 0/42", got)
		}
		if got := line(string(out), "rootfs/dev/null"); !strings.HasPrefix(got, "crw-rw-rw-") {
			t.Errorf("rootfs/dev/null: %q, want a character device", got)
		}
		for _, l := range lines {
			if !strings.Contains(l, " 2023-11-14 22:13:20 ") {
				t.Errorf("entry not stamped with the epoch: %q", l)
				break
			}
		}
	})
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// line returns the first line of listing that ends with suffix.
func line(listing, suffix string) string {
	for _, l := range strings.Split(listing, "\n") {
		if strings.HasSuffix(l, suffix) {
			return l
		}
	}
	return ""
}
