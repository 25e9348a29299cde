package dockerpreload

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"github.com/sovereign-stack/ssbuild/internal/digest"
	"io"
	"os"
	"path/filepath"
	"strings"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// LoadAll loads every image of dir's manifest into d, once: it is what
// ssbuild-preload.service runs on an instance's first boot. For each image it
// checks the archive's sha256 before loading and the image ID after. An
// image d already has with the manifest's ID is skipped, so a re-run after a
// crash finishes the rest; when all are in, it writes the stamp, and later
// runs return at once.
func LoadAll(ctx context.Context, d Daemon, dir string, rep *progress.Reporter) error {
	if rep == nil {
		rep = progress.Discard()
	}
	m, err := ReadManifest(dir)
	if err != nil {
		return err
	}
	manifestSum, _, err := digest.File(filepath.Join(dir, ManifestName))
	if err != nil {
		return fmt.Errorf("docker image manifest: %w", err)
	}
	stamp := filepath.Join(dir, StampName)
	if b, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(b)) == manifestSum {
		return nil
	}
	for _, e := range m.Images {
		if err := load(ctx, d, dir, e, rep); err != nil {
			return err
		}
	}
	// The stamp holds the manifest's sha256: it stands for this set of
	// images only.
	if err := writeFileAtomic(stamp, []byte(manifestSum+"\n")); err != nil {
		return fmt.Errorf("docker images: write stamp: %w", err)
	}
	return nil
}

func load(ctx context.Context, d Daemon, dir string, e Entry, rep *progress.Reporter) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("docker image %s: %w", e.Ref, err)
	}
	if have, err := d.ImageInspect(ctx, e.Ref); err == nil && have.ID == e.ImageID {
		rep.Info("docker image %s: already loaded", e.Ref)
		return nil
	} else if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("docker image %s: %w", e.Ref, err)
	}
	path := filepath.Join(dir, e.File)
	// Check the whole archive before the daemon sees a byte of it.
	sum, size, err := digest.File(path)
	if err != nil {
		return fmt.Errorf("docker image %s: %w", e.Ref, err)
	}
	if sum != e.SHA256 || size != e.Size {
		return fmt.Errorf("docker image %s: archive %s is corrupted: sha256 %s, %d bytes; manifest says %s, %d bytes",
			e.Ref, path, sum, size, e.SHA256, e.Size)
	}
	task := rep.Start("load docker image "+e.Ref, e.Size, "bytes")
	defer func() { task.Done(err) }()
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("docker image %s: %w", e.Ref, err)
	}
	defer f.Close()
	// The bytes the daemon gets are hashed again on the way, so a file
	// changed between the check and the load is caught too.
	h := sha256.New()
	resp, err := d.ImageLoad(ctx, io.TeeReader(f, io.MultiWriter(h, task)))
	if err != nil {
		return fmt.Errorf("docker image %s: load %s: %w", e.Ref, path, err)
	}
	err = streamError(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("docker image %s: load %s: %w", e.Ref, path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != e.SHA256 {
		return fmt.Errorf("docker image %s: archive %s changed while loading (sha256 %s)", e.Ref, path, got)
	}
	have, err := d.ImageInspect(ctx, e.Ref)
	if err != nil {
		return fmt.Errorf("docker image %s: after load: %w", e.Ref, err)
	}
	if have.ID != e.ImageID {
		return fmt.Errorf("docker image %s: loaded image ID %s, manifest says %s", e.Ref, have.ID, e.ImageID)
	}
	return nil
}

// UnitName is the systemd unit that runs LoadAll on first boot.
const UnitName = "ssbuild-preload.service"

// LoadCommand is the ssbuild subcommand the unit runs; it takes --dir.
const LoadCommand = "load-docker-images"

//go:embed ssbuild-preload.service
var unitTemplate string

// Unit returns the text of ssbuild-preload.service for an ssbuild binary at
// ssbuildPath loading the images in dir (DefaultDir in the base image).
func Unit(ssbuildPath, dir string) string {
	return strings.NewReplacer("@SSBUILD@", ssbuildPath, "@DIR@", dir, "@STAMP@", filepath.Join(dir, StampName),
		"@COMMAND@", LoadCommand).Replace(unitTemplate)
}
