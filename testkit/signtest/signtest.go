// Package signtest gives tests a builder's ed25519 key made by OpenSSH's
// ssh-keygen, the signer a build loads from it, and OpenSSH's own check of
// a signature ssbuild made (what a user runs without ssbuild).
package signtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// Namespace is the SSHSIG namespace ssbuild signs in (ssh-keygen -n).
const Namespace = "ssbuild"

// Key makes an ed25519 key pair without a passphrase; it returns the
// private key file (0600, its public key beside it as .pub).
func Key(t testing.TB, comment string) string {
	t.Helper()
	testenv.RequireTools(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	cmd := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	return key
}

// Signer makes a key (Key) and loads it as a signed build does.
func Signer(t testing.TB, comment string) (key string, s *signature.Signer) {
	t.Helper()
	key = Key(t, comment)
	s, err := signature.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, s
}

// Verify fails the test unless ssh-keygen -Y verify accepts sig (a file)
// over data in Namespace, with only key's public half (key+".pub")
// allowed, as identity.
func Verify(t testing.TB, key, identity, sig string, data []byte) {
	t.Helper()
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	allowed := filepath.Join(t.TempDir(), "allowed_signers")
	if err := os.WriteFile(allowed, append([]byte(identity+" "), pub...), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", allowed, "-I", identity, "-n", Namespace, "-s", sig)
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y verify %s: %v\n%s", sig, err, out)
	}
}
