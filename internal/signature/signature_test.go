package signature_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// keygen makes an ed25519 key pair with ssh-keygen and returns the
// private and public key files.
func keygen(t *testing.T, comment string, extra ...string) (priv, pub string) {
	t.Helper()
	testenv.RequireTools(t, "ssh-keygen", "sha256sum")
	priv = filepath.Join(t.TempDir(), "id_ed25519")
	args := append([]string{"-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", priv}, extra...)
	run(t, "", nil, "ssh-keygen", args...)
	return priv, priv + ".pub"
}

func run(t *testing.T, dir string, stdin []byte, name string, args ...string) string {
	t.Helper()
	out, err := command(dir, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func command(dir string, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// fakeOutput is an output folder like `ssbuild image` writes, with its
// SHA256SUMS made by sha256sum.
func fakeOutput(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "demo-image")
	files := map[string]string{
		"image/rootfs.squashfs":   "squashfs bytes",
		"image/metadata.tar.xz":   "metadata",
		"chainstate-regtest.tar":  "chainstate",
		"image/debian-lxd.tar.xz": "unified",
	}
	var names []string
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	sums := run(t, dir, nil, "sha256sum", names...)
	if err := os.WriteFile(filepath.Join(dir, signature.ChecksumsFile), []byte(sums), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func sign(t *testing.T, priv, dir string) {
	t.Helper()
	s, err := signature.LoadSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SignFile(filepath.Join(dir, signature.ChecksumsFile)); err != nil {
		t.Fatal(err)
	}
}

func readKey(t *testing.T, pub string) *signature.PublicKey {
	t.Helper()
	k, err := signature.ReadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sshKeygenVerify is the user's check: ssh-keygen -Y verify with an
// allowed_signers file holding the public key.
func sshKeygenVerify(t *testing.T, pub, dir string) (string, error) {
	t.Helper()
	key, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	allowed := filepath.Join(t.TempDir(), "allowed_signers")
	if err := os.WriteFile(allowed, append([]byte("builder "), key...), 0o644); err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(filepath.Join(dir, signature.ChecksumsFile))
	if err != nil {
		t.Fatal(err)
	}
	return command(dir, sums, "ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "builder",
		"-n", signature.Namespace, "-s", signature.SigFile)
}

func TestSignedFolderVerifiesWithSSHKeygenAndVerifyDir(t *testing.T) {
	priv, pub := keygen(t, "builder@ci")
	dir := fakeOutput(t)
	sign(t, priv, dir)

	if out, err := sshKeygenVerify(t, pub, dir); err != nil || !strings.Contains(out, `Good "ssbuild" signature for builder`) {
		t.Fatalf("ssh-keygen -Y verify: %v\n%s", err, out)
	}
	sums, _ := os.ReadFile(filepath.Join(dir, signature.ChecksumsFile))
	if out, err := command(dir, sums, "ssh-keygen", "-Y", "check-novalidate", "-n", signature.Namespace, "-s", signature.SigFile); err != nil {
		t.Fatalf("ssh-keygen -Y check-novalidate: %v\n%s", err, out)
	}
	run(t, dir, nil, "sha256sum", "-c", "--quiet", signature.ChecksumsFile)

	k := readKey(t, pub)
	v, err := signature.VerifyDir(k, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Files) != 4 || len(v.Unlisted) != 0 {
		t.Errorf("verified %v, unlisted %v; want 4 files, none unlisted", v.Files, v.Unlisted)
	}
	fp := run(t, "", nil, "ssh-keygen", "-l", "-f", pub)
	if k.Comment != "builder@ci" || !strings.Contains(fp, k.Fingerprint()) || k.String() != "builder@ci ("+k.Fingerprint()+")" {
		t.Errorf("key named %q; ssh-keygen -l says %s", k, fp)
	}

	// A file beside SHA256SUMS that it does not name is reported, not checked.
	os.WriteFile(filepath.Join(dir, "cluster.secret"), []byte("x"), 0o600)
	if v, err = signature.VerifyDir(k, dir); err != nil || strings.Join(v.Unlisted, ",") != "cluster.secret" {
		t.Errorf("unlisted %v, err %v; want cluster.secret", v, err)
	}
}

func TestSSHKeygenSignatureVerifies(t *testing.T) {
	priv, pub := keygen(t, "builder@laptop")
	dir := fakeOutput(t)
	run(t, dir, nil, "ssh-keygen", "-Y", "sign", "-q", "-f", priv, "-n", signature.Namespace, signature.ChecksumsFile)
	if _, err := signature.VerifyDir(readKey(t, pub), dir); err != nil {
		t.Fatal(err)
	}
	if err := signature.VerifyFile(readKey(t, pub), filepath.Join(dir, signature.ChecksumsFile)); err != nil {
		t.Fatal(err)
	}
}

// TestTamperingIsNamed: each way a folder can differ from what the key
// signed fails with a problem naming the cause.
func TestTamperingIsNamed(t *testing.T) {
	priv, pub := keygen(t, "builder@ci")
	otherPriv, _ := keygen(t, "mallory")
	for _, c := range []struct {
		name      string
		change    func(t *testing.T, dir string)
		want      string
		sshKeygen bool // ssh-keygen -Y verify fails too
	}{
		{"flipped byte in an artifact", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, "image/rootfs.squashfs"))
		}, "image/rootfs.squashfs: content differs from SHA256SUMS", false},
		{"missing artifact", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "chainstate-regtest.tar"))
		}, "chainstate-regtest.tar: missing", false},
		{"replaced SHA256SUMS", func(t *testing.T, dir string) {
			// An attacker swaps an artifact and writes a matching SHA256SUMS.
			flipByte(t, filepath.Join(dir, "image/rootfs.squashfs"))
			sums := run(t, dir, nil, "sha256sum", "image/rootfs.squashfs", "image/metadata.tar.xz", "chainstate-regtest.tar", "image/debian-lxd.tar.xz")
			os.WriteFile(filepath.Join(dir, signature.ChecksumsFile), []byte(sums), 0o644)
		}, "SHA256SUMS: does not match its signature SHA256SUMS.sig: changed or replaced after signing", true},
		{"signature by another key", func(t *testing.T, dir string) {
			sign(t, otherPriv, dir)
		}, "SHA256SUMS.sig: made by another key (SHA256:", true},
		{"missing signature", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, signature.SigFile))
		}, "SHA256SUMS.sig: missing: SHA256SUMS is not signed", true},
		{"signature for another namespace", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, signature.SigFile))
			run(t, dir, nil, "ssh-keygen", "-Y", "sign", "-q", "-f", priv, "-n", "file", signature.ChecksumsFile)
		}, `SHA256SUMS.sig: made for namespace "file", not "ssbuild"`, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := fakeOutput(t)
			sign(t, priv, dir)
			c.change(t, dir)
			_, err := signature.VerifyDir(readKey(t, pub), dir)
			var f *signature.Failure
			if !errors.As(err, &f) || len(f.Problems) != 1 || !strings.HasPrefix(f.Problems[0], c.want) {
				t.Fatalf("VerifyDir: %v\nwant one problem %q", err, c.want)
			}
			if out, err := sshKeygenVerify(t, pub, dir); (err != nil) != c.sshKeygen {
				t.Errorf("ssh-keygen -Y verify: error %v, want failure %v\n%s", err, c.sshKeygen, out)
			}
		})
	}
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadSignerRefuses(t *testing.T) {
	priv, pub := keygen(t, "builder@ci")
	keyBytes, _ := os.ReadFile(priv)
	secret := strings.Split(string(keyBytes), "\n")[1] // a line of the key's base64

	os.Chmod(priv, 0o644)
	_, err := signature.LoadSigner(priv)
	if err == nil || !strings.Contains(err.Error(), priv) || !strings.Contains(err.Error(), "chmod 600 "+priv) {
		t.Errorf("0644 key: %v; want the file and the chmod 600 fix", err)
	}
	os.Chmod(priv, 0o600)

	os.Chmod(pub, 0o600)
	if _, err := signature.LoadSigner(pub); err == nil || !strings.Contains(err.Error(), "not an OpenSSH private key") {
		t.Errorf("a public key as sign key: %v", err)
	}
	if _, err := signature.ReadPublicKey(priv); err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "give its .pub file") {
		t.Errorf("a private key as public key: %v", err)
	}

	rsa := filepath.Join(t.TempDir(), "id_rsa")
	run(t, "", nil, "ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsa)
	if _, err := signature.LoadSigner(rsa); err == nil || !strings.Contains(err.Error(), "ed25519 keys only") {
		t.Errorf("rsa key: %v", err)
	}
}

func TestEncryptedKeyNeedsPassphraseEnv(t *testing.T) {
	priv, pub := keygen(t, "builder@ci")
	run(t, "", nil, "ssh-keygen", "-q", "-p", "-P", "", "-N", "correct horse", "-f", priv)
	t.Setenv(signature.PassphraseEnv, "")
	os.Unsetenv(signature.PassphraseEnv)
	if _, err := signature.LoadSigner(priv); err == nil || !strings.Contains(err.Error(), "is encrypted: put its passphrase in $"+signature.PassphraseEnv) {
		t.Errorf("encrypted key without passphrase: %v", err)
	}
	t.Setenv(signature.PassphraseEnv, "wrong")
	if _, err := signature.LoadSigner(priv); err == nil || strings.Contains(err.Error(), "wrong") {
		t.Errorf("wrong passphrase: %v (and the passphrase is never printed)", err)
	}
	t.Setenv(signature.PassphraseEnv, "correct horse")
	dir := fakeOutput(t)
	sign(t, priv, dir)
	if out, err := sshKeygenVerify(t, pub, dir); err != nil {
		t.Fatalf("ssh-keygen -Y verify: %v\n%s", err, out)
	}
}

// TestSignBytesAndPublicKey: what Sign returns is what ssh-keygen accepts
// for the data, the signer's public key is the .pub file's (comment
// included), and VerifyData checks it with that key.
func TestSignBytesAndPublicKey(t *testing.T) {
	priv, pub := keygen(t, "builder@example")
	s, err := signature.LoadSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(pub)
	if got := s.PublicKey().AuthorizedKey(); string(got) != string(want) {
		t.Fatalf("AuthorizedKey %q, want the .pub file's %q", got, want)
	}
	data := []byte("0123  os.img\n")
	sig, err := s.Sign(data)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "SHA256SUMS")
	os.WriteFile(file, data, 0o644)
	os.WriteFile(file+".sig", sig, 0o644)
	allowed := filepath.Join(dir, "allowed_signers")
	os.WriteFile(allowed, append([]byte("builder "), want...), 0o644)
	run(t, "", data, "ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "builder", "-n", signature.Namespace, "-s", file+".sig")
	if err := signature.VerifyData(s.PublicKey(), data, file); err != nil {
		t.Errorf("VerifyData: %v", err)
	}
	var f *signature.Failure
	if err := signature.VerifyData(s.PublicKey(), append(data, 'x'), file); !errors.As(err, &f) || !strings.Contains(err.Error(), "changed or replaced after signing") {
		t.Errorf("VerifyData of other bytes: %v", err)
	}
}
