// Package chainstate packs a recipe's Bitcoin chainstate (a pruned datadir,
// as a directory or a plain/gzip tarball, or an AssumeUTXO snapshot file)
// into an artifact that LXD imports as a custom storage volume, and verifies
// such an artifact before use.
//
// The artifact is exactly what `lxc storage volume export --compression none`
// writes for a custom filesystem volume (checked against LXD 5.0.2): an
// uncompressed tar with
//
//	backup/index.yaml           type custom; the volume's user.ssbuild.* config
//	                            says network, kind, source and snapshot header
//	backup/volume/              the volume root:
//	backup/volume/...           the datadir's files, or the snapshot file
//	backup/volume/.ssbuild-chainstate.sha256   the manifest, last
//
// so a host imports it once (`lxc storage volume import POOL FILE [NAME]`,
// or the client's CreateStoragePoolVolumeFromBackup) and every deployment
// gets its own copy with `lxc storage volume copy`, which on ZFS is a clone
// of a snapshot and takes no time and no space (LXD's zfs driver clones when
// zfs.clone_copy is not "false" and the source volume has no snapshots, as
// an imported artifact has none). Chainstate data is already
// compressed (LevelDB) or random (block files, hashes): no compression.
//
// The manifest lists every regular file with its sha256 (see Manifest). Its
// own sha256 (Artifact.ManifestSHA256) is what a deployment pins: Verify
// with VerifyOptions.ManifestSHA256 then also catches a manifest rewritten
// to match changed files. For a directory source the recipe's sha256 is this
// same manifest digest (Manifest.Bytes shows how to compute it with
// coreutils); for a tarball or snapshot it is the file's sha256. Either is
// checked before anything is written.
//
// An AssumeUTXO snapshot's header is read (ReadSnapshotHeader) and its
// network must be the recipe's, when packing and again when verifying.
//
// The artifact is reproducible: entries in a fixed order (a directory in
// WalkDir order, a tarball in its own order), every mtime the given
// SOURCE_DATE_EPOCH, owner 0:0 without names, modes 0644/0755.
//
// It is written as ".NAME.*.partial" next to Output and renamed when complete
// and synced; an error or a cancelled context removes the partial file, and
// the next Pack removes one a killed run left behind. Only directories and
// regular files are packed: a symlink or device in the source, or a link
// entry in a tarball, is refused, naming it.
package chainstate

import (
	"fmt"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Kinds of chainstate, as in the recipe.
const (
	KindPrunedDatadir = "pruned-datadir"
	KindAssumeUTXO    = "assumeutxo"
)

// Volume config keys written into backup/index.yaml. LXD keeps user.* keys on
// import, so `lxc storage volume show` tells what a volume holds.
const (
	keyNetwork       = "user.ssbuild.network"
	keyKind          = "user.ssbuild.kind"
	keySource        = "user.ssbuild.source"
	keySnapshotHash  = "user.ssbuild.snapshot.base-blockhash"
	keySnapshotCoins = "user.ssbuild.snapshot.coins"
)

// Options say what to pack and where.
type Options struct {
	Chainstate recipes.Chainstate
	// BaseDir resolves a relative Chainstate.Source (the recipe's directory).
	BaseDir string
	// Output is the artifact's path, e.g. out/chainstate-mainnet.tar.
	Output string
	// VolumeName is the custom volume's name in the artifact; default
	// "chainstate-<network>". `lxc storage volume import` can rename it.
	VolumeName string
	// SourceDateEpoch is stamped as the mtime of every entry (seconds since
	// 1970). The caller resolves SOURCE_DATE_EPOCH and the recipe's setting.
	SourceDateEpoch int64
	// Progress reports the long steps in bytes; nil reports nothing.
	Progress *progress.Reporter
}

// Artifact describes a packed (or verified) chainstate artifact.
type Artifact struct {
	Path   string
	SHA256 string // of the artifact file
	Size   int64  // of the artifact file

	Volume  string // custom volume name
	Network string
	Kind    string
	Source  string // base name of the source

	ManifestSHA256 string // sha256 of the manifest, to pin
	Files          int    // regular files in the volume (without the manifest)
	Bytes          int64  // their total size

	Snapshot *SnapshotHeader // for an AssumeUTXO snapshot
}

func (o Options) volumeName() string {
	if o.VolumeName != "" {
		return o.VolumeName
	}
	return VolumeName(o.Chainstate.Network)
}

// VolumeName is the custom volume an artifact of network restores to, in
// LXD's default project, where deploy clones each instance's copy from.
func VolumeName(network string) string { return "chainstate-" + network }

func (o Options) mtime() time.Time { return time.Unix(o.SourceDateEpoch, 0).UTC() }

func checkRecipeDigest(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	d := strings.ToLower(strings.TrimPrefix(s, "sha256:"))
	if !isHexDigest(d) {
		return "", fmt.Errorf("sha256 %q: want 64 hex digits", s)
	}
	return d, nil
}
