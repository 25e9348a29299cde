package installerbuild

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/signtest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestSignStepSignsTheChecksums runs the sign step on the folder the
// image step leaves (installer.img + SHA256SUMS; a real one needs a host
// OS build): ssh-keygen accepts SHA256SUMS.sig, and VerifyDir the folder.
func TestSignStepSignsTheChecksums(t *testing.T) {
	testenv.RequireTools(t, "ssh-keygen", "sha256sum")
	key, signer := signtest.Signer(t, "builder")
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, ImageFile), []byte("a disk image"), 0o644)
	sum := exec.Command("sha256sum", ImageFile)
	sum.Dir = out
	sums, err := sum.Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(out, signature.ChecksumsFile), sums, 0o644)
	b := &build{out: out, opts: Options{Progress: progress.Discard()}, signer: signer}
	if err := b.sign(context.Background()); err != nil {
		t.Fatal(err)
	}
	signtest.Verify(t, key, "builder", filepath.Join(out, signature.SigFile), sums)
	k, err := signature.ReadPublicKey(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := signature.VerifyDir(k, out); err != nil || len(v.Files) != 1 {
		t.Errorf("VerifyDir: %v %v", v, err)
	}
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
	out := filepath.Join(t.TempDir(), "out")
	_, err = Build(context.Background(), r, Options{OutDir: out, CacheDir: t.TempDir(), Binary: "/bin/true", SignKey: key})
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
