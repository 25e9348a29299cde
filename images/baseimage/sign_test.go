package baseimage

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/signtest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestSignStepSignsTheChecksums runs the checksums and sign steps on a
// small output folder (a whole image needs debootstrap): ssh-keygen
// accepts SHA256SUMS.sig and sha256sum -c the SHA256SUMS it signs.
func TestSignStepSignsTheChecksums(t *testing.T) {
	testenv.RequireTools(t, "ssh-keygen", "sha256sum")
	key, signer := signtest.Signer(t, "builder")
	out := t.TempDir()
	for name, text := range map[string]string{imagedir.ImageDir + "/rootfs.squashfs": "rootfs", "chainstate-regtest.tar": "chain"} {
		os.MkdirAll(filepath.Join(out, filepath.Dir(name)), 0o755)
		os.WriteFile(filepath.Join(out, name), []byte(text), 0o644)
	}
	b := &build{out: out, rep: progress.Discard(), signer: signer}
	if err := b.checksums(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.sign(context.Background()); err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(filepath.Join(out, signature.ChecksumsFile))
	if err != nil {
		t.Fatal(err)
	}
	signtest.Verify(t, key, "builder", filepath.Join(out, signature.SigFile), sums)
	sh(t, out, "sha256sum", "-c", "--quiet", signature.ChecksumsFile)
}

// TestUnsafeSignKeyIsRefusedFirst: a private key others can read stops
// the build before anything is built, naming the file and the fix.
func TestUnsafeSignKeyIsRefusedFirst(t *testing.T) {
	testenv.RequireTools(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	sh(t, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
	os.Chmod(key, 0o644)
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	r.Image.DockerImages = nil // else the missing Docker daemon is refused first
	out := filepath.Join(t.TempDir(), "out")
	_, err = Build(context.Background(), r, Options{OutDir: out, CacheDir: t.TempDir(), Binary: "/bin/true",
		SignKey: key})
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+key) {
		t.Fatalf("build with a 0644 key: %v; want it refused with chmod 600 %s", err, key)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("output folder exists after a refused key")
	}
}

func sh(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}
