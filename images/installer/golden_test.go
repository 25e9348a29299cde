package installer_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/gpttest"

	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

var update = flag.Bool("update", false, "re-record testdata/*.golden")

// TestGoldenLayout records what a user sees of an image built from fixed
// stand-in inputs: the partition table with its GUIDs, the ESP's files
// and loader configuration, the payload's listing, and the image's
// sha256, which pins the bytes across machines (same Debian 12 tools).
// Re-record with go test -run TestGoldenLayout -update.
func TestGoldenLayout(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "sgdisk", "mdir", "mtype", "unsquashfs")
	in := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(in, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file("base-image/metadata.yaml", "architecture: x86_64\n")
	spec := installer.Spec{Name: "golden", Epoch: epoch,
		Kernel: file("vmlinuz", strings.Repeat("kernel", 100000)), Initramfs: file("initrd.img", strings.Repeat("initrd", 50000)),
		SystemdBoot: file("systemd-bootx64.efi", "MZ systemd-boot stand-in"),
		Payload: []installer.PayloadFile{
			{Name: "os.img", Path: file("os.img", strings.Repeat("os", 300000))},
			{Name: "base-image", Path: filepath.Join(in, "base-image")},
			{Name: "recipe.yaml", Path: file("recipe.yaml", "name: golden\n")},
		},
		Menu: []installer.MenuEntry{{ID: "host-nuc1", Title: "install host nuc1", Options: "ssbuild.host=nuc1"},
			{ID: "host-nuc2", Title: "install host nuc2", Options: "ssbuild.host=nuc2"}},
		Output: filepath.Join(t.TempDir(), "installer.img")}
	res, err := installer.Build(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sha256 %s\nsize %d\n\n", res.SHA256, res.Size)
	// The first line names the (temporary) file.
	table := run(t, "sgdisk", "-p", spec.Output)
	b.WriteString(table[strings.Index(table, "\n")+1:])
	for _, p := range []string{"1", "2"} {
		info := run(t, "sgdisk", "-i", p, spec.Output)
		b.WriteString("\npartition " + p + ":\n" + info)
	}
	parts := gpttest.Partitions(t, spec.Output)
	esp := gpttest.Extract(t, spec.Output, parts[0])
	b.WriteString("\nESP:\n" + run(t, "mdir", "-/", "-b", "-i", esp, "::/"))
	for _, f := range []string{"loader/loader.conf", installer.EntryFile, installer.MenuEntryFile("host-nuc1"), installer.MenuEntryFile("host-nuc2")} {
		b.WriteString("\n" + f + ":\n" + run(t, "mtype", "-i", esp, "::/"+f))
	}
	payload := gpttest.Extract(t, spec.Output, parts[1])
	listing := run(t, "unsquashfs", "-lln", "-d", "", payload)
	b.WriteString("\npayload:\n" + regexp.MustCompile(`(?m)^Parallel unsquashfs.*\n|^\d+ inodes.*\n`).ReplaceAllString(listing, ""))

	golden := filepath.Join("testdata", "layout.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (record it with -update)", err)
	}
	if string(want) != b.String() {
		t.Errorf("layout differs from %s (re-record with -update if intended):\n%s", golden, b.String())
	}
}

// A digest the caller gives for a payload file (computed while it wrote
// the file: the output cache's) saves the build a pass over the file: the
// image is the same bytes as when the build hashes the file itself. The
// digest is trusted; a wrong one gives a stick whose payload fails the
// manifest check (sha256sum -c, as the installer checks it), naming the
// file.
func TestGivenPayloadDigest(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs", "unsquashfs", "sha256sum")
	in := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(in, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	osImg := strings.Repeat("os", 300000)
	sum := sha256.Sum256([]byte(osImg))
	spec := func(digest string) installer.Spec {
		return installer.Spec{Name: "digest", Epoch: epoch,
			Kernel: file("vmlinuz", "kernel"), Initramfs: file("initrd.img", "initrd"), SystemdBoot: file("bootx64.efi", "MZ"),
			Payload: []installer.PayloadFile{{Name: "os.img", Path: file("os.img", osImg), SHA256: digest},
				{Name: "recipe.yaml", Path: file("recipe.yaml", "name: digest\n")}},
			Output: filepath.Join(t.TempDir(), "installer.img")}
	}
	hashed, err := installer.Build(context.Background(), spec(""))
	if err != nil {
		t.Fatal(err)
	}
	given, err := installer.Build(context.Background(), spec(hex.EncodeToString(sum[:])))
	if err != nil {
		t.Fatal(err)
	}
	if given.SHA256 != hashed.SHA256 {
		t.Errorf("image with the digest given: sha256 %s, hashed by the build: %s", given.SHA256, hashed.SHA256)
	}
	wrong := spec(strings.Repeat("0", 64))
	if _, err := installer.Build(context.Background(), wrong); err != nil {
		t.Fatal(err)
	}
	x := filepath.Join(t.TempDir(), "x")
	run(t, "unsquashfs", "-q", "-n", "-d", x, gpttest.Extract(t, wrong.Output, gpttest.Partitions(t, wrong.Output)[1]))
	cmd := exec.Command("sha256sum", "--quiet", "-c", "SHA256SUMS")
	cmd.Dir = x
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "os.img: FAILED") {
		t.Errorf("payload with a wrong given digest: sha256sum -c %v:\n%s\nwant os.img named as failing", err, out)
	}
}
