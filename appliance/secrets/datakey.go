package secrets

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Envelope: the deployments' secrets are sealed under one random data key
// per cluster; the registry keeps that key only wrapped under a
// key-encryption key (KEK) derived from a cluster secret, one wrapping per
// cluster secret still in use. Rotating the cluster secret adds a wrapping
// under the new secret's KEK; the sealed secrets stay as they are.

// KEK wraps the data key. It is derived from the cluster secret with its
// own HKDF info, so it never equals the sealing key of DeriveKey or any key
// of appliance/cluster. Printing a KEK never shows it.
type KEK struct{ k []byte }

const kekInfo = "ssbuild/v1 data key wrapping, cluster "

// DeriveKEK derives the key-encryption key from the cluster secret with
// HKDF-SHA256, bound to the cluster's name.
func DeriveKEK(clusterSecret []byte, cluster string) (KEK, error) {
	k, err := derive(clusterSecret, kekInfo+cluster, "KEK")
	if err != nil {
		return KEK{}, err
	}
	return KEK{k: k}, nil
}

// ParseKEK reads a KEK written by Hex (the CLI hands the new secret's KEK,
// never the secret, to the service).
func ParseKEK(s string) (KEK, error) {
	k, err := hex.DecodeString(s)
	if err != nil || len(k) != chacha20poly1305.KeySize {
		return KEK{}, errors.New("secrets: KEK: want 64 hex digits")
	}
	return KEK{k: k}, nil
}

// Hex is the KEK in hex, to hand it over the service's root-only socket.
// Never print it.
func (k KEK) Hex() string { return hex.EncodeToString(k.k) }

// IsZero says the KEK was never derived.
func (k KEK) IsZero() bool { return len(k.k) == 0 }

// Fingerprint names the KEK in the registry: a SHA-256 over the KEK under
// its own label, so it reveals neither the KEK nor the cluster secret.
func (k KEK) Fingerprint() string {
	h := sha256.New()
	h.Write([]byte("ssbuild KEK fingerprint\x00"))
	h.Write(k.k)
	return hex.EncodeToString(h.Sum(nil))
}

// String never shows the KEK.
func (k KEK) String() string { return "secrets.KEK{redacted}" }

// GoString never shows the KEK.
func (k KEK) GoString() string { return k.String() }

// Format never shows the KEK, whatever the verb.
func (k KEK) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// NewDataKey makes a random data key.
func NewDataKey() (Key, error) {
	k := make([]byte, chacha20poly1305.KeySize)
	if _, err := rand.Read(k); err != nil {
		return Key{}, fmt.Errorf("secrets: data key: random: %w", err)
	}
	return Key{k: k, v: SealDataKey}, nil
}

// wrapVersion is the first byte of a wrapping.
const wrapVersion = 1

// ErrWrongKEK is returned by Unwrap when the wrapping does not open.
var ErrWrongKEK = errors.New("the data key's wrapping does not open with this KEK (another cluster secret, another cluster, or altered)")

func wrapAssociated(cluster string, kek KEK) []byte {
	return []byte("ssbuild data key\x00" + cluster + "\x00" + kek.Fingerprint())
}

// Wrap seals the data key under the KEK, bound to the cluster and the KEK's
// fingerprint.
func Wrap(kek KEK, cluster string, dk Key) ([]byte, error) {
	if kek.IsZero() || dk.IsZero() || dk.v != SealDataKey {
		return nil, errors.New("secrets: wrap: want a KEK and a data key")
	}
	aead, err := chacha20poly1305.NewX(kek.k)
	if err != nil {
		return nil, fmt.Errorf("secrets: wrap: %w", err)
	}
	out := make([]byte, 1+aead.NonceSize(), 1+aead.NonceSize()+len(dk.k)+aead.Overhead())
	out[0] = wrapVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("secrets: wrap: random: %w", err)
	}
	return aead.Seal(out, out[1:], dk.k, wrapAssociated(cluster, kek)), nil
}

// Unwrap opens a data key wrapped by Wrap; ErrWrongKEK when it does not.
func Unwrap(kek KEK, cluster string, wrapped []byte) (Key, error) {
	if kek.IsZero() {
		return Key{}, errors.New("secrets: unwrap: no KEK")
	}
	aead, err := chacha20poly1305.NewX(kek.k)
	if err != nil {
		return Key{}, fmt.Errorf("secrets: unwrap: %w", err)
	}
	if len(wrapped) != 1+aead.NonceSize()+chacha20poly1305.KeySize+aead.Overhead() || wrapped[0] != wrapVersion {
		return Key{}, fmt.Errorf("secrets: unwrap: not a data key wrapping of this ssbuild (%d bytes)", len(wrapped))
	}
	k, err := aead.Open(nil, wrapped[1:1+aead.NonceSize()], wrapped[1+aead.NonceSize():], wrapAssociated(cluster, kek))
	if err != nil {
		return Key{}, fmt.Errorf("secrets: %w", ErrWrongKEK)
	}
	return Key{k: k, v: SealDataKey}, nil
}
