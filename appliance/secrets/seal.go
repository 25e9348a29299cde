package secrets

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Key seals a deployment's secrets at rest (in the registry). It is the
// cluster's data key (NewDataKey, kept in the registry only wrapped under a
// KEK derived from the cluster secret, which every member holds and the
// registry's files do not), or, in sets sealed by an older ssbuild, a key
// derived straight from the cluster secret (DeriveKey). Either way a copy of
// the registry's files alone reveals no secret. Printing a Key never shows
// it.
type Key struct {
	k []byte
	v byte // the seal version its sets carry: SealDerived or SealDataKey
}

// keyInfo names what the derived key is for (HKDF's info): a key derived
// from the cluster secret for another purpose never equals this one.
const keyInfo = "ssbuild/v1 deployment secrets at rest, cluster "

// DeriveKey derives the sealing key from the cluster secret with
// HKDF-SHA256, bound to the cluster's name.
func DeriveKey(clusterSecret []byte, cluster string) (Key, error) {
	k, err := derive(clusterSecret, keyInfo+cluster, "key")
	if err != nil {
		return Key{}, err
	}
	return Key{k: k, v: SealDerived}, nil
}

// derive is HKDF-SHA256 of the cluster secret for info; what names the
// key in errors.
func derive(clusterSecret []byte, info, what string) ([]byte, error) {
	if len(clusterSecret) == 0 {
		return nil, fmt.Errorf("secrets: derive %s: empty cluster secret", what)
	}
	k, err := hkdf.Key(sha256.New, clusterSecret, nil, info, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("secrets: derive %s: %w", what, err)
	}
	return k, nil
}

// IsZero says the key was never derived.
func (k Key) IsZero() bool { return len(k.k) == 0 }

// String never shows the key.
func (k Key) String() string { return "secrets.Key{redacted}" }

// GoString never shows the key.
func (k Key) GoString() string { return k.String() }

// Format never shows the key, whatever the verb.
func (k Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// The first byte of a sealed set says which key sealed it; the format after
// it is the same (XChaCha20-Poly1305, 24-byte random nonce, the set's
// name=value lines).
const (
	// SealDerived: under the key derived from the cluster secret
	// (DeriveKey), as ssbuild sealed before the data key; such a set is
	// re-sealed under the data key once (appliance/deploystate).
	SealDerived = 1
	// SealDataKey: under the cluster's data key.
	SealDataKey = 2
)

// SealVersion is the first byte of a sealed set (-1 when empty).
func SealVersion(sealed []byte) int { return firstByte(sealed) }

// ErrWrongKey is returned by Open when the sealed set does not open: it was
// sealed under another cluster secret, for another deployment, or altered.
var ErrWrongKey = errors.New("does not open with the key derived from this host's cluster secret " +
	"(sealed under another cluster secret, for another deployment, or altered)")

// associated binds a sealed set to its deployment: one deployment's
// secrets copied onto another's row do not open.
func associated(deployment string) []byte {
	return []byte("ssbuild deployment secrets\x00" + deployment)
}

// Seal encrypts and authenticates the set under k, bound to its deployment.
func Seal(k Key, s Set) ([]byte, error) {
	if k.IsZero() {
		return nil, errors.New("secrets: seal: no key")
	}
	aead, err := chacha20poly1305.NewX(k.k)
	if err != nil {
		return nil, fmt.Errorf("secrets: seal: %w", err)
	}
	out := make([]byte, 1+aead.NonceSize(), 1+aead.NonceSize()+len(s.values)*80+aead.Overhead())
	out[0] = k.v
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("secrets: seal: random: %w", err)
	}
	return aead.Seal(out, out[1:], s.lines(), associated(s.deployment)), nil
}

// Open decrypts a set sealed by Seal for deployment; ErrWrongKey when it
// does not open.
func Open(k Key, deployment string, sealed []byte) (Set, error) {
	if k.IsZero() {
		return Set{}, errors.New("secrets: open: no key")
	}
	aead, err := chacha20poly1305.NewX(k.k)
	if err != nil {
		return Set{}, fmt.Errorf("secrets: open: %w", err)
	}
	if len(sealed) < 1+aead.NonceSize()+aead.Overhead() || sealed[0] != k.v {
		return Set{}, fmt.Errorf("secrets of %s: not a sealed set of this ssbuild (version %d, %d bytes)", deployment, firstByte(sealed), len(sealed))
	}
	nonce, box := sealed[1:1+aead.NonceSize()], sealed[1+aead.NonceSize():]
	plain, err := aead.Open(nil, nonce, box, associated(deployment))
	if err != nil {
		return Set{}, fmt.Errorf("secrets of %s: %w", deployment, ErrWrongKey)
	}
	values, err := parse("sealed secrets of "+deployment, plain)
	if err != nil {
		return Set{}, err
	}
	return Set{deployment: deployment, values: values}, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// Digest is a SHA-256 over the set's names and values, for comparing two
// sets without showing either (tests, and a rotation's record).
func (s Set) Digest() string {
	sum := sha256.Sum256(s.lines())
	return hex.EncodeToString(sum[:])
}

// lines is the set as name=value lines, sorted by name.
func (s Set) lines() []byte {
	var b []byte
	for _, n := range s.Names() {
		b = append(b, n...)
		b = append(b, '=')
		b = append(b, s.values[n]...)
		b = append(b, '\n')
	}
	return b
}
