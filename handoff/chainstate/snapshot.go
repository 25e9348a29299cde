package chainstate

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// An AssumeUTXO snapshot (bitcoin-cli dumptxoutset) starts with the
// serialized node::SnapshotMetadata of Bitcoin Core's
// src/node/utxo_snapshot.h (version 2, Core v28 and later):
//
//	magic         5 bytes  'u' 't' 'x' 'o' 0xff  (SNAPSHOT_MAGIC_BYTES)
//	version       uint16 little-endian           (VERSION = 2)
//	network magic 4 bytes                        (pchMessageStart)
//	base blockhash 32 bytes, uint256 in serialization (little-endian) order
//	coins count   uint64 little-endian
//
// Core itself refuses a snapshot of another network on loadtxoutset; we
// refuse it at build time, before days of a deployment waiting on it.
const snapshotHeaderSize = 5 + 2 + 4 + 32 + 8

var snapshotMagic = [5]byte{'u', 't', 'x', 'o', 0xff}

// snapshotVersions are the metadata versions Bitcoin Core reads.
var snapshotVersions = []uint16{2}

// networkMagic maps network names to their message-start bytes, from Bitcoin
// Core's src/kernel/chainparams.cpp. Signet's is the first 4 bytes of the
// double sha256 of the default challenge script (a custom signet has its own
// and is not known here). "testnet" is testnet3, as in the recipe.
var networkMagic = map[string][4]byte{
	"mainnet":  {0xf9, 0xbe, 0xb4, 0xd9},
	"testnet":  {0x0b, 0x11, 0x09, 0x07},
	"testnet4": {0x1c, 0x16, 0x3f, 0x28},
	"signet":   {0x0a, 0x03, 0xcf, 0x40},
	"regtest":  {0xfa, 0xbf, 0xb5, 0xda},
}

// SnapshotHeader is the metadata at the start of an AssumeUTXO snapshot.
type SnapshotHeader struct {
	Version uint16
	// NetworkMagic is the raw message-start; Network its name, or
	// "unknown (xxxxxxxx)" for a network Bitcoin Core does not ship.
	NetworkMagic [4]byte
	Network      string
	// BaseBlockHash in the usual display order (reversed bytes), as
	// bitcoin-cli and block explorers show it.
	BaseBlockHash string
	CoinsCount    uint64
}

// String is the header as a user reads it in a build log.
func (h SnapshotHeader) String() string {
	return fmt.Sprintf("AssumeUTXO snapshot v%d for %s, base block %s, %d coins", h.Version, h.Network, h.BaseBlockHash, h.CoinsCount)
}

// ReadSnapshotHeader reads and checks the header of the snapshot file at path.
func ReadSnapshotHeader(path string) (SnapshotHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return SnapshotHeader{}, fmt.Errorf("read snapshot header: %w", err)
	}
	defer f.Close()
	h, err := ParseSnapshotHeader(f)
	if err != nil {
		return SnapshotHeader{}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	return h, nil
}

// ParseSnapshotHeader reads the header from the start of r.
func ParseSnapshotHeader(r io.Reader) (SnapshotHeader, error) {
	var buf [snapshotHeaderSize]byte
	n, err := io.ReadFull(r, buf[:])
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return SnapshotHeader{}, fmt.Errorf("truncated header: %d of %d bytes (not an AssumeUTXO snapshot, or cut short)", n, snapshotHeaderSize)
	}
	if err != nil {
		return SnapshotHeader{}, err
	}
	if !bytes.Equal(buf[:5], snapshotMagic[:]) {
		return SnapshotHeader{}, fmt.Errorf("bad magic %x, want %x (\"utxo\" 0xff): not an AssumeUTXO snapshot, or one from before Bitcoin Core v28", buf[:5], snapshotMagic[:])
	}
	var h SnapshotHeader
	h.Version = binary.LittleEndian.Uint16(buf[5:7])
	if !slices.Contains(snapshotVersions, h.Version) {
		return SnapshotHeader{}, fmt.Errorf("unknown snapshot version %d (known: %v)", h.Version, snapshotVersions)
	}
	copy(h.NetworkMagic[:], buf[7:11])
	h.Network = networkName(h.NetworkMagic)
	hash := slices.Clone(buf[11:43])
	slices.Reverse(hash)
	h.BaseBlockHash = hex.EncodeToString(hash)
	h.CoinsCount = binary.LittleEndian.Uint64(buf[43:51])
	return h, nil
}

func networkName(magic [4]byte) string {
	for name, m := range networkMagic {
		if m == magic {
			return name
		}
	}
	return fmt.Sprintf("unknown (%x)", magic[:])
}

// CheckNetwork refuses a snapshot made for another network than want.
func (h SnapshotHeader) CheckNetwork(want string) error {
	magic, ok := networkMagic[want]
	if !ok {
		return fmt.Errorf("unknown network %q", want)
	}
	if h.NetworkMagic != magic {
		return fmt.Errorf("snapshot is for network %s, the deployment's chain is %s", h.Network, want)
	}
	return nil
}

// MarshalSnapshotHeader is the inverse of ParseSnapshotHeader, for tests and
// tools that write snapshot-shaped files.
func MarshalSnapshotHeader(h SnapshotHeader) ([]byte, error) {
	hash, err := hex.DecodeString(h.BaseBlockHash)
	if err != nil || len(hash) != 32 {
		return nil, fmt.Errorf("base block hash %q: want 64 hex digits", h.BaseBlockHash)
	}
	slices.Reverse(hash)
	buf := make([]byte, 0, snapshotHeaderSize)
	buf = append(buf, snapshotMagic[:]...)
	buf = binary.LittleEndian.AppendUint16(buf, h.Version)
	buf = append(buf, h.NetworkMagic[:]...)
	buf = append(buf, hash...)
	buf = binary.LittleEndian.AppendUint64(buf, h.CoinsCount)
	return buf, nil
}

// NetworkMagic returns the message-start bytes of a network name.
func NetworkMagic(network string) ([4]byte, bool) {
	m, ok := networkMagic[network]
	return m, ok
}
