// Package dockerpreload puts Docker images into a base image so that an
// instance comes up with them without touching a registry.
//
// At build time Save takes each image the recipe names from a Docker daemon
// (pulling it when the daemon lacks it), checks its pin, and writes one
// `docker save` archive per image plus manifest.json into a directory of the
// rootfs. On the instance's first boot the ssbuild-preload.service unit runs
// LoadAll, which checks each archive's sha256, loads it into the instance's
// Docker and checks that the image it got is the one the manifest names.
//
// # What a pin matches
//
// A recipe pins an image with digest: sha256:<64 hex>. The pin matches when
// it equals either
//   - a repo digest of the image for the ref's own repository (the
//     registry's manifest digest, what `docker pull name@sha256:...` and
//     `docker images --digests` show), for images that came from a registry;
//     or
//   - the image ID (sha256 of the image config, `docker images --no-trunc`),
//     for images built or imported locally, which have no repo digest.
//
// Both are content addresses, so either pins the exact bytes. The manifest
// records the image ID as well, because `docker load` does not restore repo
// digests: the image ID is what LoadAll checks on the instance.
package dockerpreload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/recipes"
)

const (
	// ManifestName is the manifest file in a preload directory; it is
	// written last, so a directory without it is not a finished save.
	ManifestName = "manifest.json"
	// StampName is written into the directory once LoadAll has loaded
	// every image; the unit does not run again while it exists.
	StampName = ".loaded"
	// DefaultDir is where the image build puts the archives in the rootfs.
	DefaultDir = "/var/lib/ssbuild/docker-images"
	// manifestVersion changes when the manifest's meaning changes.
	manifestVersion = 1
)

// Image is one image to pre-load: recipes.DockerImage's fields.
type Image struct {
	Ref    string // e.g. ghost:5.82.2-alpine
	Digest string // optional pin, sha256:<64 hex>; see the package doc
}

// Manifest lists the saved archives, sorted by Ref.
type Manifest struct {
	Version int     `json:"version"`
	Images  []Entry `json:"images"`
}

// Entry is one saved image.
type Entry struct {
	Ref        string `json:"ref"`
	Digest     string `json:"digest,omitempty"`     // the recipe's pin, when there was one
	RepoDigest string `json:"repoDigest,omitempty"` // registry digest of the ref's repository, when known
	ImageID    string `json:"imageId"`              // what the instance's Docker must end up with
	File       string `json:"file"`                 // archive, relative to the manifest
	Size       int64  `json:"size"`                 // archive bytes
	SHA256     string `json:"sha256"`               // archive sha256, hex
}

// Daemon is the part of the Docker API client that pre-loading uses;
// *client.Client implements it.
type Daemon interface {
	ImageInspect(ctx context.Context, image string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, opts image.PullOptions) (io.ReadCloser, error)
	ImageSave(ctx context.Context, images []string, opts ...client.ImageSaveOption) (io.ReadCloser, error)
	ImageLoad(ctx context.Context, input io.Reader, opts ...client.ImageLoadOption) (image.LoadResponse, error)
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ReadManifest reads and checks dir's manifest.
func ReadManifest(dir string) (Manifest, error) {
	path := filepath.Join(dir, ManifestName)
	b, err := os.ReadFile(path)
	if err != nil {
		return Manifest{}, fmt.Errorf("docker image manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("docker image manifest %s: %w", path, err)
	}
	if m.Version != manifestVersion {
		return Manifest{}, fmt.Errorf("docker image manifest %s: version %d, this ssbuild reads %d", path, m.Version, manifestVersion)
	}
	for _, e := range m.Images {
		// A file name with a path in it could point outside dir.
		if e.File == "" || e.File != filepath.Base(e.File) || strings.HasPrefix(e.File, ".") {
			return Manifest{}, fmt.Errorf("docker image manifest %s: %s: bad file name %q", path, e.Ref, e.File)
		}
		if !digestRE.MatchString(e.ImageID) || len(e.SHA256) != 64 {
			return Manifest{}, fmt.Errorf("docker image manifest %s: %s: bad image ID or sha256", path, e.Ref)
		}
	}
	return m, nil
}

// writeFileAtomic writes data to path through a temporary file and a rename,
// synced, so a crash leaves either the old file, the new one or none.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".partial"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// familiar normalises a ref the way `docker save` writes RepoTags
// ("busybox" -> "busybox:latest", "docker.io/library/x:1" -> "x:1").
func familiar(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", err
	}
	return reference.FamiliarString(reference.TagNameOnly(named)), nil
}

// streamError reads a Docker JSON message stream (pull, load) to its end and
// returns the first error the daemon reported in it: those calls answer 200
// and report failure inside the stream.
func streamError(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading daemon response: %w", err)
		}
		if msg.ErrorDetail.Message != "" {
			return errors.New(msg.ErrorDetail.Message)
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
	}
}

// FromRecipe returns the images a recipe names, for Save.
func FromRecipe(images []recipes.DockerImage) []Image {
	out := make([]Image, len(images))
	for i, img := range images {
		out[i] = Image{Ref: img.Ref, Digest: img.Digest}
	}
	return out
}
