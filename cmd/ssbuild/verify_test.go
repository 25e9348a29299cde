package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// signedFolder is a small output folder signed with a fresh ssh-keygen
// key; it returns the folder and the public key file.
func signedFolder(t *testing.T) (dir, pub string) {
	t.Helper()
	testenv.RequireTools(t, "ssh-keygen", "sha256sum")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "builder@ci", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, "installer.img"), []byte("a disk image"), 0o644)
	sum := exec.Command("sha256sum", "installer.img")
	sum.Dir = dir
	sums, err := sum.Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, signature.ChecksumsFile), sums, 0o644)
	s, err := signature.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SignFile(filepath.Join(dir, signature.ChecksumsFile)); err != nil {
		t.Fatal(err)
	}
	return dir, key + ".pub"
}

func TestVerifyCommand(t *testing.T) {
	dir, pub := signedFolder(t)
	fp, err := exec.Command("ssh-keygen", "-l", "-f", pub).Output()
	if err != nil {
		t.Fatal(err)
	}
	fingerprint := strings.Fields(string(fp))[1]

	// Both orders of DIR and --key.
	for _, args := range [][]string{{"verify", dir, "--key", pub}, {"verify", "--key", pub, dir}} {
		code, out, errOut := ssbuild(t, args...)
		want := dir + ": good signature by builder@ci (" + fingerprint + "); 1 file matches SHA256SUMS"
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("%v: code %d\n%s%s\nwant %q", args, code, out, errOut, want)
		}
	}

	code, _, errOut := ssbuild(t, "verify", dir)
	if code != exitUsage || !strings.Contains(errOut, "--key") {
		t.Errorf("without --key: code %d %s", code, errOut)
	}
	code, _, errOut = ssbuild(t, "verify", dir, "--key", filepath.Join(filepath.Dir(pub), "id_ed25519"))
	if code != exitInvalid || !strings.Contains(errOut, "is a private key") {
		t.Errorf("private key as --key: code %d %s", code, errOut)
	}

	img := filepath.Join(dir, "installer.img")
	data, _ := os.ReadFile(img)
	data[3] ^= 1
	os.WriteFile(img, data, 0o644)
	code, out, errOut := ssbuild(t, "verify", dir, "--key", pub)
	if code != exitInvalid || out != "" || !strings.Contains(errOut, "installer.img: content differs from SHA256SUMS") {
		t.Errorf("flipped byte: code %d\n%s%s", code, out, errOut)
	}

	os.Remove(filepath.Join(dir, signature.SigFile))
	code, _, errOut = ssbuild(t, "verify", dir, "--key", pub)
	if code != exitInvalid || !strings.Contains(errOut, "SHA256SUMS.sig: missing") {
		t.Errorf("no signature: code %d %s", code, errOut)
	}
}

// TestSignKeyFlagReachesTheBuild: --sign-key of image and installer is
// checked before anything is built; a key others can read is refused.
func TestSignKeyFlagReachesTheBuild(t *testing.T) {
	testenv.RequireTools(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	os.Chmod(key, 0o644)
	for _, cmd := range []string{"image", "installer"} {
		out := filepath.Join(t.TempDir(), "out")
		code, _, errOut := ssbuild(t, cmd, "--recipe", "demo", "--out", out, "--cache", t.TempDir(), "--sign-key", key)
		if code == exitOK || !strings.Contains(errOut, "chmod 600 "+key) {
			t.Errorf("%s --sign-key (0644): code %d, %s", cmd, code, errOut)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%s: output %s exists after a refused key", cmd, out)
		}
	}
	if code, out, _ := ssbuild(t, "verify", "--help"); code != 0 || !strings.Contains(out, "USAGE:") {
		t.Errorf("verify --help: code %d\n%s", code, out)
	}
}
