package chainstate

import (
	"archive/tar"
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// maxManifest bounds how much of a manifest is read: a line per file, and a
// datadir has thousands of files, not millions.
const maxManifest = 64 << 20

// VerifyOptions are what the user of an artifact expects of it.
type VerifyOptions struct {
	// Network is the deployment's chain; the artifact must be for it. A
	// volume directory records no network, so VerifyDir ignores it.
	Network string
	// ManifestSHA256, when set, pins the manifest (Artifact.ManifestSHA256
	// at build time), so a manifest rewritten to match changed files fails.
	ManifestSHA256 string
	Progress       *progress.Reporter
}

// Verify re-hashes every file of an artifact against its manifest and
// returns what the artifact holds. Every problem names the file. It does not
// hash the artifact file as a whole (Artifact.SHA256 stays empty): that would
// double the time, and the pinned manifest digest already covers the content.
func Verify(ctx context.Context, path string, o VerifyOptions) (*Artifact, error) {
	a, err := verify(ctx, path, o)
	if err != nil {
		return nil, fmt.Errorf("verify chainstate %s: %w", path, err)
	}
	return a, nil
}

func verify(ctx context.Context, path string, o VerifyOptions) (*Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	task := cmp.Or(o.Progress, progress.Discard()).Start("chainstate: verify "+filepath.Base(path), st.Size(), "bytes")
	br := bufio.NewReaderSize(io.TeeReader(ctxReader{ctx, f}, task), 1<<20)
	tr := tar.NewReader(br)
	a := &Artifact{Path: path, Size: st.Size()}
	rd := &artifactReader{found: map[string]string{}, seen: map[string]bool{}}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			task.Done(err)
			return nil, fmt.Errorf("read artifact (truncated, or not a tar archive): %w", err)
		}
		if err := rd.entry(hdr, tr); err != nil {
			task.Done(err)
			return nil, err
		}
	}
	task.Done(nil)
	idx := rd.idx
	if idx == nil {
		return nil, errors.New("no backup/index.yaml: not an LXD volume backup")
	}
	a.Volume, a.Kind = idx.Config.Volume.Name, idx.Config.Volume.Config[keyKind]
	a.Network, a.Source = idx.Config.Volume.Config[keyNetwork], idx.Config.Volume.Config[keySource]
	if o.Network != "" && a.Network != o.Network {
		return nil, fmt.Errorf("artifact is for network %q, the deployment's chain is %s", a.Network, o.Network)
	}
	if a.Kind == KindAssumeUTXO {
		// The snapshot's own header, not only the index, must match.
		if rd.snapshot == nil {
			return nil, fmt.Errorf("%s: the snapshot named in backup/index.yaml is not in the volume", a.Source)
		}
		if err := rd.snapshot.CheckNetwork(a.Network); err != nil {
			return nil, fmt.Errorf("%s: %w", a.Source, err)
		}
		a.Snapshot = rd.snapshot
	}
	m, err := checkManifest(rd.manifest, o.ManifestSHA256)
	if err != nil {
		return nil, err
	}
	if err := m.compare(rd.found); err != nil {
		return nil, err
	}
	a.ManifestSHA256 = m.Digest()
	a.Files, a.Bytes = len(m), rd.bytes
	return a, nil
}

// artifactReader collects what the entries of an artifact hold.
type artifactReader struct {
	found    map[string]string // volume file → sha256
	seen     map[string]bool   // entry names
	bytes    int64
	manifest []byte
	idx      *index
	snapshot *SnapshotHeader // read from the snapshot file of an assumeutxo volume
}

func (rd *artifactReader) entry(hdr *tar.Header, r io.Reader) error {
	name := strings.TrimSuffix(hdr.Name, "/")
	if rd.seen[name] {
		// On extraction the later entry would win: never accept two.
		return fmt.Errorf("%s: appears twice in the artifact", hdr.Name)
	}
	rd.seen[name] = true
	switch {
	case rd.idx == nil && hdr.Name != "backup/index.yaml":
		// LXD writes the index first, and so do we; reading it first lets
		// the snapshot header be checked on the way.
		return fmt.Errorf("%s: first entry, want backup/index.yaml: not a chainstate artifact", hdr.Name)
	case hdr.Name == "backup/index.yaml":
		data, err := io.ReadAll(io.LimitReader(r, 1<<20))
		if err != nil {
			return err
		}
		var i index
		if err := yaml.Unmarshal(data, &i); err != nil {
			return fmt.Errorf("backup/index.yaml: %w", err)
		}
		if i.Type != "custom" || i.Config.Volume.Config[keyNetwork] == "" {
			return fmt.Errorf("backup/index.yaml: type %q without %s: not a chainstate volume", i.Type, keyNetwork)
		}
		rd.idx = &i
		return nil
	case hdr.Name == "backup/volume" || hdr.Name == volumePrefix:
		return nil
	case !strings.HasPrefix(hdr.Name, volumePrefix):
		return fmt.Errorf("%s: unexpected entry (not a chainstate artifact)", hdr.Name)
	}
	rel := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, volumePrefix), "/")
	switch hdr.Typeflag {
	case tar.TypeDir:
		return nil
	case tar.TypeReg:
	default:
		return fmt.Errorf("%s: tar entry type %q: not a regular file or directory", rel, hdr.Typeflag)
	}
	if rel == ManifestName {
		data, err := io.ReadAll(io.LimitReader(r, maxManifest+1))
		if err != nil {
			return err
		}
		rd.manifest = data
		return nil
	}
	if err := checkPath(rel); err != nil {
		return err
	}
	h := sha256.New()
	cr := &countWriter{w: h}
	r = io.TeeReader(r, cr)
	vol := rd.idx.Config.Volume.Config
	if vol[keyKind] == KindAssumeUTXO && rel == vol[keySource] {
		sh, err := ParseSnapshotHeader(r)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		rd.snapshot = &sh
	}
	_, err := io.Copy(io.Discard, r)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: %d of %d bytes: artifact truncated", rel, cr.n, hdr.Size)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	rd.found[rel] = hex.EncodeToString(h.Sum(nil))
	rd.bytes += cr.n
	return nil
}

// checkManifest parses a manifest and checks it against the pinned digest.
func checkManifest(data []byte, pinned string) (Manifest, error) {
	if data == nil {
		return nil, fmt.Errorf("%s: missing", ManifestName)
	}
	if len(data) > maxManifest {
		return nil, fmt.Errorf("%s: larger than %d bytes", ManifestName, maxManifest)
	}
	if pinned != "" {
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != pinned {
			return nil, fmt.Errorf("%s: sha256 %s, expected %s (manifest changed, or another artifact)", ManifestName, got, pinned)
		}
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestName, err)
	}
	return m, nil
}

// VerifyDir checks a volume's directory (an imported or copied volume,
// mounted) against the manifest at its root, as Verify does an artifact.
func VerifyDir(ctx context.Context, dir string, o VerifyOptions) error {
	if err := verifyDir(ctx, dir, o); err != nil {
		return fmt.Errorf("verify chainstate %s: %w", dir, err)
	}
	return nil
}

func verifyDir(ctx context.Context, dir string, o VerifyOptions) error {
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		data, err = nil, nil
	}
	if err != nil {
		return err
	}
	m, err := checkManifest(data, o.ManifestSHA256)
	if err != nil {
		return err
	}
	task := cmp.Or(o.Progress, progress.Discard()).Start("chainstate: verify "+filepath.Base(dir), sourceSize(dir, nil), "bytes")
	found := map[string]string{}
	err = walkDir(dir, func(rel string, d fs.DirEntry) error {
		if d.IsDir() || rel == ManifestName {
			return nil
		}
		sum, err := hashFile(ctx, filepath.Join(dir, rel), task)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		found[rel] = sum
		return nil
	})
	task.Done(err)
	if err != nil {
		return err
	}
	return m.compare(found)
}
