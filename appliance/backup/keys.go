package backup

import (
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"filippo.io/age"
	"github.com/zeebo/blake3"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
)

// KeySecret names the deployment secret (sealed with its other secrets in
// the registry, or its state folder's file) that backups derive their keys
// from. It never leaves the cluster: a backup folder holds only what the
// owner's age identity opens, chunk names and a public key.
const KeySecret = "ssbuild-backup-key"

// Keys are what a deployment's backup secret gives, each from HKDF-SHA256
// with its own info string:
//   - the key of the chunk names (keyed BLAKE3-256 of a chunk's plain
//     bytes), so equal chunks share a name across backups, while whoever
//     holds the folder cannot test a guess of the content (a plain hash
//     would let him). BLAKE3's keyed mode is a MAC like HMAC-SHA256 (the
//     names of format 2) and, with AVX2, twice as fast on 1 MiB chunks
//     even against SHA-NI: every byte of every backup is named, also the
//     unchanged ones of an incremental one;
//   - the chunker's gear table, so where chunks are cut does not follow from
//     the content alone (a fixed table lets chunk sizes fingerprint files);
//   - the Ed25519 key that signs each manifest: age says nothing of who
//     encrypted a file, so without it anyone could put a manifest of their
//     own chunks in the folder.
type Keys struct {
	mac  []byte
	gear [256]uint64
	sign ed25519.PrivateKey
	test [32]byte // the restore-test identity's scalar (TestIdentity)
}

// DeriveKeys derives the keys from a backup secret's value.
func DeriveKeys(secret string) (*Keys, error) {
	if len(secret) < 32 {
		return nil, errors.New("backup secret too short")
	}
	read := func(info string, n int) ([]byte, error) {
		return hkdf.Key(sha256.New, []byte(secret), nil, "ssbuild backup "+info, n)
	}
	k := &Keys{}
	var err error
	// v2 since format 3 (compressed payloads, BLAKE3): no format-2 chunk's name is met again.
	if k.mac, err = read("chunk names v2", 32); err != nil {
		return nil, err
	}
	g, err := read("chunker gear v1", 256*8)
	if err != nil {
		return nil, err
	}
	for i := range k.gear {
		k.gear[i] = binary.LittleEndian.Uint64(g[i*8:])
	}
	seed, err := read("manifest signing v1", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	k.sign = ed25519.NewKeyFromSeed(seed)
	t, err := read("restore test identity v1", 32)
	if err != nil {
		return nil, err
	}
	copy(k.test[:], t)
	return k, nil
}

// chunkName is a chunk's name: its keyed BLAKE3-256, hex.
func (k *Keys) chunkName(data []byte) string {
	h, err := blake3.NewKeyed(k.mac)
	if err != nil {
		panic(err) // the key is 32 bytes by construction
	}
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// pathCuts tells the volume reader's group cuts (volume.go): each path's
// first 16 bits of its keyed name, as chunkName would give them for
// "group cut v1\x00" + path, with one hasher for a whole listing (a new
// one per path was a third of an unchanged volume's listing cost).
type pathCuts struct {
	h   *blake3.Hasher
	sum [32]byte
}

func (k *Keys) pathCuts() *pathCuts {
	h, err := blake3.NewKeyed(k.mac)
	if err != nil {
		panic(err) // the key is 32 bytes by construction
	}
	return &pathCuts{h: h}
}

func (c *pathCuts) of(rel string) uint64 {
	c.h.Reset()
	c.h.WriteString("group cut v1\x00")
	c.h.WriteString(rel)
	c.h.Sum(c.sum[:0])
	return uint64(c.sum[0])<<8 | uint64(c.sum[1])
}

// Signer is the public key that checks this deployment's manifests, as
// `backup` prints it and `--signer` takes it.
func (k *Keys) Signer() string {
	return signerPrefix + base64.RawStdEncoding.EncodeToString(k.sign.Public().(ed25519.PublicKey))
}

// String keeps the keys out of any print.
func (k *Keys) String() string { return "backup.Keys{redacted}" }

const signerPrefix = "ed25519:"

// ParseSigner reads a signer public key ("ed25519:BASE64").
func ParseSigner(s string) (ed25519.PublicKey, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), signerPrefix)
	if !ok {
		return nil, fmt.Errorf("signer %q: want %sBASE64 (as `ssbuild backup` prints it)", s, signerPrefix)
	}
	b, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("signer %q: not an Ed25519 public key", s)
	}
	return ed25519.PublicKey(b), nil
}

// DeploymentKeys returns the keys of a deployment (its project name) from
// its secrets, making the backup secret when create is set and the
// deployment has none; without create, a store without one gives nil.
func DeploymentKeys(ctx context.Context, st secrets.Store, project string, create bool) (*Keys, error) {
	if st == nil {
		return nil, errors.New("no deployment state to find the backup key in")
	}
	var names []string
	if create {
		names = []string{KeySecret}
	} else if ok, err := st.Has(ctx, project); err != nil || !ok {
		return nil, err
	}
	set, err := st.Ensure(ctx, project, names)
	if err != nil {
		return nil, fmt.Errorf("backup key of %s (%s): %w", project, st.Where(), err)
	}
	v, ok := set.Get(KeySecret)
	if !ok {
		return nil, nil
	}
	return DeriveKeys(v)
}

// TestIdentity is the age identity a cluster derives from a deployment's
// backup secret for scheduled restore tests (recipe backup.restoreTest):
// when they are on, each backup is also encrypted to its recipient, so the
// cluster can read its own backups (the trade-off the owner opts into).
func (k *Keys) TestIdentity() (*age.X25519Identity, error) {
	return age.ParseX25519Identity(strings.ToUpper(bech32Encode("age-secret-key-", k.test[:])))
}

// bech32Encode is BIP 173's encoding (age's key format) of data under hrp.
func bech32Encode(hrp string, data []byte) string {
	const charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
	var values []byte // data regrouped from 8 to 5 bits
	acc, bits := 0, 0
	for _, b := range data {
		acc = acc<<8 | int(b)
		bits += 8
		for bits >= 5 {
			bits -= 5
			values = append(values, byte(acc>>bits&31))
		}
	}
	if bits > 0 {
		values = append(values, byte(acc<<(5-bits)&31))
	}
	polymod := func(v []byte) uint32 {
		gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
		chk := uint32(1)
		for _, x := range v {
			top := chk >> 25
			chk = (chk&0x1ffffff)<<5 ^ uint32(x)
			for i := range 5 {
				if top>>i&1 == 1 {
					chk ^= gen[i]
				}
			}
		}
		return chk
	}
	var exp []byte
	for i := range len(hrp) {
		exp = append(exp, hrp[i]>>5)
	}
	exp = append(exp, 0)
	for i := range len(hrp) {
		exp = append(exp, hrp[i]&31)
	}
	mod := polymod(append(append(exp, values...), 0, 0, 0, 0, 0, 0)) ^ 1
	out := []byte(hrp + "1")
	for _, v := range values {
		out = append(out, charset[v])
	}
	for i := range 6 {
		out = append(out, charset[mod>>(5*(5-i))&31])
	}
	return string(out)
}
