package installerbuild

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/appliance/install"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/gpttest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// fakeHostOS is what the host-os step leaves, without debootstrap: a
// root with a kernel whose wanted modules are all built in, systemd-boot,
// os.img and the ESP tree (their bytes do not matter to these steps).
func fakeHostOS(t *testing.T) hostos.Result {
	t.Helper()
	root := t.TempDir()
	const ver = "6.1.0-test-amd64"
	var builtin []string
	for _, m := range installerModules() {
		builtin = append(builtin, "kernel/fake/"+m+".ko")
	}
	files := map[string]string{
		"lib/modules/" + ver + "/modules.dep":     "",
		"lib/modules/" + ver + "/modules.builtin": strings.Join(builtin, "\n") + "\n",
		"boot/vmlinuz-" + ver:                     "MZ fake kernel",
		hostos.SystemdBoot:                        "MZ fake systemd-boot",
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	work := t.TempDir()
	res := hostos.Result{Root: root, KernelVersion: ver, OSImage: filepath.Join(work, stick.OSImage), ESPDir: filepath.Join(work, stick.ESPDir)}
	os.WriteFile(res.OSImage, []byte("ext4 image"), 0o644)
	os.MkdirAll(filepath.Join(res.ESPDir, "EFI/BOOT"), 0o755)
	os.WriteFile(filepath.Join(res.ESPDir, "EFI/BOOT/BOOTX64.EFI"), []byte("MZ"), 0o644)
	return res
}

// TestSignedBuildSignsThePayloadForTheInstaller runs the initramfs and
// image steps over a fake host OS, with and without a sign key. With one,
// the initramfs (read with cpio) holds the key's public half at
// stick.SignerKeyPath and the payload (read with unsquashfs) holds
// SHA256SUMS.sig, which ssh-keygen accepts for its SHA256SUMS and the
// installer's manifest check too; without one, neither is there.
func TestSignedBuildSignsThePayloadForTheInstaller(t *testing.T) {
	testenv.RequireTools(t, "ssh-keygen", "mksquashfs", "unsquashfs", "cpio", "gzip", "sgdisk")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	sh(t, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "builder@example", "-f", key)
	pub, _ := os.ReadFile(key + ".pub")
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	for _, signed := range []bool{true, false} {
		b := &build{r: r, opts: Options{Binary: "/bin/true", Progress: progress.Discard()}, work: t.TempDir(), out: t.TempDir(),
			epoch: 1700000000, host: fakeHostOS(t), secretPath: filepath.Join(t.TempDir(), "cluster.secret")}
		os.WriteFile(b.secretPath, []byte("secret\n"), 0o600)
		if signed {
			if b.signer, err = signature.LoadSigner(key); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.initramfs(context.Background()); err != nil {
			t.Fatalf("signed %v: initramfs: %v", signed, err)
		}
		if err := b.image(context.Background()); err != nil {
			t.Fatalf("signed %v: image: %v", signed, err)
		}

		// The initramfs, as the kernel unpacks it.
		initrd := t.TempDir()
		cmd := exec.Command("sh", "-c", "gzip -dc "+b.initrd+" | cpio -id --quiet")
		cmd.Dir = initrd
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("unpack initramfs: %v\n%s", err, out)
		}
		got, err := os.ReadFile(filepath.Join(initrd, stick.SignerKeyPath))
		switch {
		case signed && !bytes.Equal(got, pub):
			t.Errorf("initramfs %s: %q (%v), want the key's .pub %q", stick.SignerKeyPath, got, err, pub)
		case !signed && !os.IsNotExist(err):
			t.Errorf("unsigned build: initramfs has %s (%v)", stick.SignerKeyPath, err)
		}

		// The payload partition, as the installer mounts it.
		img := filepath.Join(b.out, ImageFile)
		payload := filepath.Join(t.TempDir(), "payload")
		sh(t, "", "unsquashfs", "-q", "-n", "-d", payload, gpttest.Extract(t, img, gpttest.Partitions(t, img)[1]))
		sig := filepath.Join(payload, stick.ManifestSig)
		if _, err := os.Stat(sig); !signed {
			if !os.IsNotExist(err) {
				t.Errorf("unsigned build: payload has %s (%v)", stick.ManifestSig, err)
			}
			continue
		}
		allowed := filepath.Join(t.TempDir(), "allowed_signers")
		os.WriteFile(allowed, append([]byte("builder "), pub...), 0o644)
		manifest, _ := os.ReadFile(filepath.Join(payload, stick.Manifest))
		cmd = exec.Command("ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "builder", "-n", signature.Namespace, "-s", sig)
		cmd.Stdin = bytes.NewReader(manifest)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("ssh-keygen -Y verify of the payload's %s: %v\n%s", stick.ManifestSig, err, out)
		}
		k, err := signature.ReadPublicKey(filepath.Join(initrd, stick.SignerKeyPath))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := install.ReadSignedManifest(payload, k); err != nil {
			t.Errorf("the installer's check with the initramfs key: %v", err)
		}
	}
}
