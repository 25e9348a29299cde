package dockerpreload

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Save writes one archive per image and the manifest into outDir, which is
// dedicated to the preload (created when missing; archives it no longer
// lists are removed). Images come from d; one d lacks is pulled from its
// registry by its ref, then its pin is checked. Every image is found and
// its pin checked before anything is written; the manifest is written last
// and atomically, after removing an older one, so an interrupted or failed
// Save never leaves a directory that looks complete.
func Save(ctx context.Context, d Daemon, images []Image, outDir string, rep *progress.Reporter) (Manifest, error) {
	if rep == nil {
		rep = progress.Discard()
	}
	images, err := checkImages(images)
	if err != nil {
		return Manifest{}, err
	}
	entries := make([]Entry, len(images))
	for i, img := range images {
		if entries[i], err = resolve(ctx, d, img, rep); err != nil {
			return Manifest{}, err
		}
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("docker images: %w", err)
	}
	// An older manifest would vouch for archives about to change; a stamp
	// (from a LoadAll run on this directory) would keep the instance's unit
	// from ever running.
	manifestPath := filepath.Join(outDir, ManifestName)
	for _, name := range []string{ManifestName, StampName} {
		if err := os.Remove(filepath.Join(outDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return Manifest{}, fmt.Errorf("docker images: %w", err)
		}
	}
	if err := syncDir(outDir); err != nil { // the removals reach the disk before new archives do
		return Manifest{}, fmt.Errorf("docker images: %w", err)
	}
	for i := range entries {
		if err := saveArchive(ctx, d, &entries[i], outDir, rep); err != nil {
			return Manifest{}, err
		}
	}
	m := Manifest{Version: manifestVersion, Images: entries}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, err
	}
	if err := writeFileAtomic(manifestPath, append(b, '\n')); err != nil {
		return Manifest{}, fmt.Errorf("docker images: write manifest: %w", err)
	}
	if err := pruneArchives(outDir, entries); err != nil {
		return Manifest{}, fmt.Errorf("docker images: %w", err)
	}
	return m, nil
}

// Resolve checks the images' refs and pins against d (pulling an image d
// lacks) and returns what Save would record for them, sorted by ref,
// without saving anything: what identifies the archives Save would write.
func Resolve(ctx context.Context, d Daemon, images []Image, rep *progress.Reporter) ([]Entry, error) {
	if rep == nil {
		rep = progress.Discard()
	}
	images, err := checkImages(images)
	if err != nil {
		return nil, err
	}
	entries := make([]Entry, len(images))
	for i, img := range images {
		if entries[i], err = resolve(ctx, d, img, rep); err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// pruneArchives removes archives (and leftovers of interrupted saves) that
// the manifest does not list, so an image dropped from the recipe does not
// stay in the base image.
func pruneArchives(dir string, keep []Entry) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		name := ent.Name()
		ours := strings.HasSuffix(name, ".tar") || strings.HasSuffix(name, ".partial")
		if !ours || slices.ContainsFunc(keep, func(e Entry) bool { return e.File == name }) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// checkImages checks refs and pins and returns the images sorted by ref, so
// that file names and manifest order do not depend on the recipe's order.
func checkImages(images []Image) ([]Image, error) {
	out := slices.Clone(images)
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.Ref, b.Ref) })
	for i, img := range out {
		if _, err := reference.ParseNormalizedNamed(img.Ref); err != nil {
			return nil, fmt.Errorf("docker image %q: %w", img.Ref, err)
		}
		// docker save/load keeps tags but not digests: an image loaded from
		// a name@digest ref would be untagged on the instance.
		if strings.Contains(img.Ref, "@") {
			return nil, fmt.Errorf("docker image %s: give a tag in ref and the digest in digest", img.Ref)
		}
		if img.Digest != "" && !digestRE.MatchString(img.Digest) {
			return nil, fmt.Errorf("docker image %s: digest %q is not sha256:<64 hex digits>", img.Ref, img.Digest)
		}
		if i > 0 && out[i-1].Ref == img.Ref {
			return nil, fmt.Errorf("docker image %s: listed twice", img.Ref)
		}
	}
	return out, nil
}

// resolve finds img in the daemon, pulling it when missing, and checks its pin.
func resolve(ctx context.Context, d Daemon, img Image, rep *progress.Reporter) (Entry, error) {
	info, err := d.ImageInspect(ctx, img.Ref)
	if cerrdefs.IsNotFound(err) {
		rep.Info("docker image %s: not in the daemon, pulling it", img.Ref)
		if err := pull(ctx, d, img.Ref); err != nil {
			return Entry{}, fmt.Errorf("docker image %s: not in the daemon, pull from its registry: %w", img.Ref, err)
		}
		info, err = d.ImageInspect(ctx, img.Ref)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("docker image %s: %w", img.Ref, err)
	}
	repoDigest, err := repoDigestFor(img.Ref, info.RepoDigests)
	if err != nil {
		return Entry{}, fmt.Errorf("docker image %s: %w", img.Ref, err)
	}
	if img.Digest != "" && img.Digest != info.ID && !slices.Contains(repoDigests(img.Ref, info.RepoDigests), img.Digest) {
		actual := "image ID " + info.ID
		if repoDigest != "" {
			actual = "repo digest " + repoDigest + ", " + actual
		}
		return Entry{}, fmt.Errorf("docker image %s: pinned digest %s does not match the image (%s)", img.Ref, img.Digest, actual)
	}
	e := Entry{Ref: img.Ref, Digest: img.Digest, RepoDigest: repoDigest, ImageID: info.ID}
	if img.Digest != "" && slices.Contains(repoDigests(img.Ref, info.RepoDigests), img.Digest) {
		e.RepoDigest = img.Digest // the one the pin matched, when there are several
	}
	return e, nil
}

func pull(ctx context.Context, d Daemon, ref string) error {
	body, err := d.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer body.Close()
	return streamError(body)
}

// repoDigests returns the digests of the image's repo digests that belong to
// ref's repository.
func repoDigests(ref string, all []string) []string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil
	}
	var out []string
	for _, rd := range all {
		c, err := reference.ParseNormalizedNamed(rd)
		if err != nil {
			continue
		}
		if dg, ok := c.(reference.Canonical); ok && c.Name() == named.Name() {
			out = append(out, dg.Digest().String())
		}
	}
	return out
}

func repoDigestFor(ref string, all []string) (string, error) {
	ds := repoDigests(ref, all)
	if len(ds) == 0 {
		return "", nil
	}
	slices.Sort(ds) // deterministic when a repository lists several
	return ds[0], nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// archiveName is a stable, readable file name for ref; the hash keeps refs
// that differ only in replaced characters apart.
func archiveName(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return strings.TrimLeft(unsafeChars.ReplaceAllString(ref, "_"), "._-") + "-" + hex.EncodeToString(sum[:4]) + ".tar"
}

// saveArchive streams `docker save ref` into outDir and fills e's file, size
// and sha256. While writing, it reads the archive's own manifest and checks
// that the archive holds exactly e.ImageID tagged as ref, so a tag that
// moved after resolve cannot slip in.
func saveArchive(ctx context.Context, d Daemon, e *Entry, outDir string, rep *progress.Reporter) (err error) {
	e.File = archiveName(e.Ref)
	task := rep.Start("save docker image "+e.Ref, 0, "bytes")
	defer func() { task.Done(err) }()
	final := filepath.Join(outDir, e.File)
	tmp := final + ".partial"
	defer func() {
		if err != nil {
			os.Remove(tmp)
			err = fmt.Errorf("docker image %s: save to %s: %w", e.Ref, final, err)
		}
	}()
	body, err := d.ImageSave(ctx, []string{e.Ref})
	if err != nil {
		return err
	}
	defer body.Close()
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	counted := &countWriter{}
	content, err := readArchive(io.TeeReader(body, io.MultiWriter(f, h, counted, task)))
	if err != nil {
		return err
	}
	if err := content.holds(e.Ref, e.ImageID); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	e.Size, e.SHA256 = counted.n, hex.EncodeToString(h.Sum(nil))
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// archiveContent is what saveArchive learns from a docker save archive.
type archiveContent struct {
	manifest []byte            // the archive's manifest.json
	small    map[string]string // sha256 of each small file, by name (configs)
}

// smallFile bounds the files readArchive hashes: image configs are a few
// KiB, layers are what is big.
const smallFile = 1 << 20

// readArchive reads a whole tar stream, keeping manifest.json and the
// sha256 of small files.
func readArchive(r io.Reader) (archiveContent, error) {
	c := archiveContent{small: map[string]string{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return c, fmt.Errorf("read archive: %w", err)
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Size > smallFile {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return c, fmt.Errorf("read archive: %s: %w", hdr.Name, err)
		}
		if hdr.Name == "manifest.json" {
			c.manifest = b
		}
		sum := sha256.Sum256(b)
		c.small[hdr.Name] = hex.EncodeToString(sum[:])
	}
	// The tar reader stops at the end-of-archive marker: copy what follows
	// too, so the file is byte for byte what the daemon sent.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return c, fmt.Errorf("read archive: %w", err)
	}
	return c, nil
}

// holds checks that the archive has one image, whose config hashes to id and
// which is tagged ref.
func (c archiveContent) holds(ref, id string) error {
	var m []struct {
		Config   string
		RepoTags []string
	}
	if err := json.Unmarshal(c.manifest, &m); err != nil {
		return fmt.Errorf("archive manifest.json: %w", err)
	}
	if len(m) != 1 {
		return fmt.Errorf("archive has %d images, want 1", len(m))
	}
	// The classic image store's ID is the config's digest; the containerd
	// store's is the manifest's (or index's), also a small file in the
	// archive (blobs/sha256/...).
	if got := "sha256:" + c.small[m[0].Config]; got != id && !c.hasDigest(id) {
		return fmt.Errorf("archive holds image %s, want %s (did the tag move?)", got, id)
	}
	want, err := familiar(ref)
	if err != nil {
		return err
	}
	for _, tag := range m[0].RepoTags {
		if t, err := familiar(tag); err == nil && t == want {
			return nil
		}
	}
	return fmt.Errorf("archive tags %v do not include %s", m[0].RepoTags, want)
}

// hasDigest reports whether a small file of the archive has digest id.
func (c archiveContent) hasDigest(id string) bool {
	for _, sum := range c.small {
		if "sha256:"+sum == id {
			return true
		}
	}
	return false
}
