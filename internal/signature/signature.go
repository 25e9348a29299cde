// Package signature signs an output folder's SHA256SUMS with an ed25519
// SSH key and verifies it, in OpenSSH's SSHSIG format (namespace
// "ssbuild"), so a user can check a build with ssh-keygen alone:
//
//	echo "builder $(cat key.pub)" > allowed_signers
//	ssh-keygen -Y verify -f allowed_signers -I builder -n ssbuild -s SHA256SUMS.sig < SHA256SUMS
//	sha256sum -c SHA256SUMS
//
// The signature covers SHA256SUMS, which names every artifact with its
// sha256: VerifyDir checks both. The wire format and armor come from
// github.com/hiddeco/sshsig, which is tested against ssh-keygen.
package signature

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

const (
	// Namespace is the SSHSIG namespace: `ssh-keygen -Y verify -n ssbuild`.
	Namespace = "ssbuild"
	// ChecksumsFile is what is signed; SigFile is its signature beside it.
	ChecksumsFile = "SHA256SUMS"
	SigFile       = ChecksumsFile + ".sig"
	// PassphraseEnv holds the passphrase of an encrypted private key.
	PassphraseEnv = "SSBUILD_SIGN_KEY_PASSPHRASE"
)

// hash is what ssh-keygen -Y sign uses.
const hash = sshsig.HashSHA512

// Signer signs with a private key read by LoadSigner.
type Signer struct {
	signer  ssh.Signer
	file    string
	comment string // of the key's .pub beside it, if that is the same key
}

// LoadSigner reads an OpenSSH ed25519 private key. The file must be its
// owner's only (like ssh, which refuses such keys too); an encrypted key
// needs its passphrase in $SSBUILD_SIGN_KEY_PASSPHRASE. Errors never
// carry key material.
func LoadSigner(path string) (*Signer, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("sign key: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("sign key %s has mode %04o: a private key must be readable by its owner only; run chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sign key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		pass, ok := os.LookupEnv(PassphraseEnv)
		if !ok {
			return nil, fmt.Errorf("sign key %s is encrypted: put its passphrase in $%s, or use a key without one", path, PassphraseEnv)
		}
		if s, err = ssh.ParsePrivateKeyWithPassphrase(data, []byte(pass)); err != nil {
			return nil, fmt.Errorf("sign key %s: cannot decrypt it with $%s: %w", path, PassphraseEnv, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("sign key %s: not an OpenSSH private key (%w)", path, err)
	}
	if t := s.PublicKey().Type(); t != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("sign key %s is a %s key; ssbuild signs with ed25519 keys only (ssh-keygen -t ed25519)", path, t)
	}
	return &Signer{signer: s, file: path, comment: pubComment(path+".pub", s.PublicKey())}, nil
}

// pubComment is the comment of the public key file beside a private key
// (the private key's own comment is not exposed by x/crypto/ssh), or ""
// when there is none or it holds another key.
func pubComment(path string, key ssh.PublicKey) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil || !bytes.Equal(pub.Marshal(), key.Marshal()) {
		return ""
	}
	return comment
}

// Fingerprint is the key's SHA256 fingerprint, as ssh-keygen -l prints it.
func (s *Signer) Fingerprint() string { return ssh.FingerprintSHA256(s.signer.PublicKey()) }

// PublicKey is the signer's public key, with the comment of its .pub file.
func (s *Signer) PublicKey() *PublicKey {
	return &PublicKey{Key: s.signer.PublicKey(), Comment: s.comment}
}

// Sign is the armored SSHSIG signature of data (what SignFile writes).
func (s *Signer) Sign(data []byte) ([]byte, error) {
	sig, err := sshsig.Sign(bytes.NewReader(data), s.signer, hash, Namespace)
	if err != nil {
		return nil, fmt.Errorf("sign with %s: %w", s.file, err)
	}
	return sshsig.Armor(sig), nil
}

// SignFile writes path.sig: the armored SSHSIG signature of path's bytes.
func (s *Signer) SignFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	sig, err := s.Sign(data)
	if err != nil {
		return fmt.Errorf("sign %s: %w", path, err)
	}
	if err := os.WriteFile(path+".sig", sig, 0o644); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	return nil
}

// PublicKey is a verifying key and its comment.
type PublicKey struct {
	Key     ssh.PublicKey
	Comment string
}

// ReadPublicKey reads an OpenSSH public key file ("ssh-ed25519 AAAA... comment").
func ReadPublicKey(path string) (*PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if strings.Contains(string(data), "PRIVATE KEY") {
		return nil, fmt.Errorf("public key %s is a private key; give its .pub file", path)
	}
	key, comment, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("public key %s: not an OpenSSH public key (ssh-ed25519 AAAA... comment): %w", path, err)
	}
	if key.Type() != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("public key %s is a %s key; ssbuild signatures use ed25519 keys", path, key.Type())
	}
	return &PublicKey{Key: key, Comment: comment}, nil
}

// Fingerprint is the key's SHA256 fingerprint.
func (k *PublicKey) Fingerprint() string { return ssh.FingerprintSHA256(k.Key) }

// AuthorizedKey is the key as a .pub file holds it: "ssh-ed25519 AAAA... comment\n".
func (k *PublicKey) AuthorizedKey() []byte {
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(k.Key), []byte("\n"))
	if k.Comment != "" {
		line = append(append(line, ' '), k.Comment...)
	}
	return append(line, '\n')
}

// String names the key: its comment and fingerprint.
func (k *PublicKey) String() string {
	if k.Comment == "" {
		return k.Fingerprint()
	}
	return k.Comment + " (" + k.Fingerprint() + ")"
}

// Failure is a verification that did not pass: every problem names the
// file it is about.
type Failure struct {
	Dir      string
	Problems []string
}

func (f *Failure) Error() string {
	return fmt.Sprintf("%s: verification failed:\n  %s", f.Dir, strings.Join(f.Problems, "\n  "))
}

// VerifyFile checks path.sig is key's signature of path's bytes; a
// mismatch is a *Failure naming the cause.
func VerifyFile(key *PublicKey, path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Failure{Dir: filepath.Dir(path), Problems: []string{filepath.Base(path) + ": missing"}}
	} else if err != nil {
		return err
	}
	return VerifyData(key, data, path)
}

// VerifyData checks path.sig against data, path's content read once, so
// what is verified is what the caller goes on to use; a mismatch is a
// *Failure naming the cause.
func VerifyData(key *PublicKey, data []byte, path string) error {
	fail := func(format string, args ...any) error {
		return &Failure{Dir: filepath.Dir(path), Problems: []string{fmt.Sprintf(format, args...)}}
	}
	name, sigName := filepath.Base(path), filepath.Base(path)+".sig"
	armored, err := os.ReadFile(path + ".sig")
	if errors.Is(err, fs.ErrNotExist) {
		return fail("%s: missing: %s is not signed", sigName, name)
	} else if err != nil {
		return err
	}
	sig, err := sshsig.Unarmor(armored)
	if err != nil {
		return fail("%s: not an SSH signature: %v", sigName, err)
	}
	if got := ssh.FingerprintSHA256(sig.PublicKey); got != key.Fingerprint() {
		return fail("%s: made by another key (%s), not %s", sigName, got, key)
	}
	if sig.Namespace != Namespace {
		return fail("%s: made for namespace %q, not %q", sigName, sig.Namespace, Namespace)
	}
	if err := sshsig.Verify(bytes.NewReader(data), sig, key.Key, sig.HashAlgorithm, Namespace); err != nil {
		return fail("%s: does not match its signature %s: changed or replaced after signing (%v)", name, sigName, err)
	}
	return nil
}

// Verified is a folder that passed VerifyDir.
type Verified struct {
	Files    []string // checked against SHA256SUMS
	Unlisted []string // in the folder but not in SHA256SUMS, so not covered
}

// VerifyDir checks dir/SHA256SUMS.sig against key, then every file that
// SHA256SUMS names. Every difference is one problem of the *Failure.
func VerifyDir(key *PublicKey, dir string) (*Verified, error) {
	sums := filepath.Join(dir, ChecksumsFile)
	data, err := os.ReadFile(sums)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &Failure{Dir: dir, Problems: []string{ChecksumsFile + ": missing: not an ssbuild output folder?"}}
	} else if err != nil {
		return nil, err
	}
	if err := VerifyData(key, data, sums); err != nil {
		return nil, err
	}
	entries, err := parseSums(data)
	if err != nil {
		return nil, &Failure{Dir: dir, Problems: []string{err.Error()}}
	}
	// Files are opened through an os.Root: a name or symlink in the folder
	// cannot lead outside it.
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	res := &Verified{}
	var problems []string
	listed := map[string]bool{ChecksumsFile: true, SigFile: true}
	for _, e := range entries {
		listed[e.name] = true
		got, err := sumOf(root, e.name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			problems = append(problems, e.name+": missing")
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", e.name, err))
		case got != e.sum:
			problems = append(problems, fmt.Sprintf("%s: content differs from SHA256SUMS (sha256 %s, signed %s)", e.name, got, e.sum))
		default:
			res.Files = append(res.Files, e.name)
		}
	}
	if len(problems) > 0 {
		return nil, &Failure{Dir: dir, Problems: problems}
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel = filepath.ToSlash(rel); !listed[rel] {
			res.Unlisted = append(res.Unlisted, rel)
		}
		return nil
	})
	sort.Strings(res.Unlisted)
	return res, err
}

type sumEntry struct{ sum, name string }

// parseSums parses sha256sum's format: "<64 hex>  <name>" ("*<name>" in
// binary mode).
func parseSums(data []byte) ([]sumEntry, error) {
	var entries []sumEntry
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		sum, name, ok := strings.Cut(line, " ")
		name = strings.TrimPrefix(strings.TrimPrefix(name, " "), "*")
		if _, err := hex.DecodeString(sum); !ok || len(sum) != 64 || err != nil || !filepath.IsLocal(name) {
			return nil, fmt.Errorf("%s line %d: want \"<sha256>  <relative path>\", got %q", ChecksumsFile, i+1, line)
		}
		entries = append(entries, sumEntry{strings.ToLower(sum), filepath.ToSlash(filepath.Clean(name))})
	}
	return entries, nil
}

func sumOf(root *os.Root, name string) (string, error) {
	f, err := root.Open(filepath.FromSlash(name))
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
