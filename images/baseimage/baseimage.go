// Package baseimage runs `ssbuild image`: it turns a recipe's image section
// into the base image every site instance boots from, in named steps:
//
//	docker-images the recipe's Docker images, verified and saved
//	chainstate    the recipe's chainstate, verified and packed as its own artifact
//	rootfs        debootstrap or a verified tarball, with the recipe's packages
//	              installed in a chroot; both cached by their inputs, so a
//	              rebuild that changes only later stages copies a cached tree
//	files         the saved Docker images, the ssbuild binary, its
//	              first-boot unit and the registry mirror setting
//	lxd-image     the tree written as LXD images (container and/or VM)
//	checksums     SHA256SUMS over the whole output
//	sign          with a sign key, SHA256SUMS.sig (internal/signature)
//
// The inputs the user may have got wrong (image pins, chainstate digests
// and network) are checked first, before minutes of package installs.
//
// The output folder appears complete or not at all: everything is written
// into a temporary sibling that is renamed into place last.
package baseimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/osbase"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/digest"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Layout of the output folder.
const (
	// BinaryPath is where the ssbuild binary goes in the image.
	BinaryPath = "/usr/local/bin/ssbuild"
)

// Options are what a build needs besides the recipe.
type Options struct {
	OutDir   string // must not exist
	CacheDir string // the debootstrap cache
	// Docker is the daemon the recipe's images are taken from (pulled into
	// it when missing). Needed only when the recipe lists images.
	Docker dockerpreload.Daemon
	// Binary is the ssbuild executable installed into the image, for the
	// first-boot units. It must run on the image's OS (a static build).
	Binary string
	// Epoch is SOURCE_DATE_EPOCH: every file time and the creation date.
	// Zero means the recipe's, then the environment's, then now.
	Epoch int64
	// SignKey is an ed25519 OpenSSH private key file that signs SHA256SUMS
	// (SHA256SUMS.sig beside it); empty: unsigned.
	SignKey  string
	Progress *progress.Reporter
}

// Result is a finished build.
type Result struct {
	OutDir     string
	Image      *lxdimage.Manifest
	Chainstate *chainstate.Artifact // nil without a chainstate
	CacheHit   bool                 // the rootfs with its packages came from the cache
	Epoch      int64
}

// ResolveEpoch picks SOURCE_DATE_EPOCH: the given value, the recipe's, the
// environment's, else the current time (a build that is not reproducible).
func ResolveEpoch(given int64, r *recipes.Recipe) (int64, error) {
	if given > 0 {
		return given, nil
	}
	if env := os.Getenv("SOURCE_DATE_EPOCH"); env != "" {
		n, err := strconv.ParseInt(env, 10, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a positive number of seconds", env)
		}
		return n, nil
	}
	if e := r.Image.Reproducible.SourceDateEpoch; e > 0 {
		return e, nil
	}
	return time.Now().Unix(), nil
}

// Build runs every step. On error the output folder does not exist, no mount
// is left, and the error names the step that failed.
func Build(ctx context.Context, r *recipes.Recipe, opts Options) (res Result, err error) {
	rep := opts.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	if opts.OutDir == "" || opts.CacheDir == "" {
		return res, errors.New("image: an output folder and a cache folder are needed")
	}
	if _, err := os.Lstat(opts.OutDir); err == nil {
		return res, fmt.Errorf("image: output %s already exists; remove it or pick another", opts.OutDir)
	}
	if len(r.Image.DockerImages) > 0 && opts.Docker == nil {
		return res, errors.New("image: the recipe pre-loads Docker images but no Docker daemon was given")
	}
	if res.Epoch, err = ResolveEpoch(opts.Epoch, r); err != nil {
		return res, fmt.Errorf("image: %w", err)
	}
	// A key that cannot sign fails now, not after minutes of building.
	var signer *signature.Signer
	if opts.SignKey != "" {
		if signer, err = signature.LoadSigner(opts.SignKey); err != nil {
			return res, fmt.Errorf("image: %w", err)
		}
	}
	parent := filepath.Dir(opts.OutDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return res, fmt.Errorf("image: output: %w", err)
	}
	// A crashed earlier build may have left work folders (with mounts).
	removeStale(parent, "."+filepath.Base(opts.OutDir)+".")
	work, err := os.MkdirTemp(parent, "."+filepath.Base(opts.OutDir)+".work-")
	if err != nil {
		return res, fmt.Errorf("image: %w", err)
	}
	defer func() {
		if rmErr := mounts.RemoveTree(work); rmErr != nil && err == nil {
			err = fmt.Errorf("image: clean up %s: %w", work, rmErr)
		}
	}()
	b := &build{r: r, opts: opts, rep: rep, work: work, epoch: res.Epoch, signer: signer,
		tree: filepath.Join(work, "rootfs"), out: filepath.Join(work, "out")}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"docker-images", b.dockerImages},
		{"chainstate", b.chainstate},
		{"rootfs", b.rootfs},
		{"files", b.files},
		{"lxd-image", b.lxdImage},
		{"checksums", b.checksums},
		{"sign", b.sign},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("image: step %s: %w", s.name, err)
		}
		if err := s.run(ctx); err != nil {
			return res, fmt.Errorf("image: step %s: %w", s.name, err)
		}
	}
	if err := os.Rename(b.out, opts.OutDir); err != nil {
		return res, fmt.Errorf("image: output: %w", err)
	}
	if b.chain != nil { // it was packed inside the folder just renamed
		b.chain.Path = filepath.Join(opts.OutDir, filepath.Base(b.chain.Path))
	}
	res.OutDir, res.Image, res.Chainstate, res.CacheHit = opts.OutDir, b.image, b.chain, b.cacheHit
	return res, nil
}

// build carries the state between steps.
type build struct {
	r          *recipes.Recipe
	opts       Options
	rep        *progress.Reporter
	work, tree string // work folder; the root filesystem inside it
	out        string // the output folder being written
	saved      string // Docker image archives, until the tree exists
	epoch      int64
	inputs     []lxdimage.Input
	cacheHit   bool // the packages layer came from the cache
	image      *lxdimage.Manifest
	chain      *chainstate.Artifact
	signer     *signature.Signer // nil: unsigned
}

func (b *build) rootfs(ctx context.Context) error {
	rb := &rootfs.Builder{CacheDir: b.opts.CacheDir, Progress: b.rep}
	res, err := osbase.Build(ctx, rb, "packages", b.r, b.r.Image.Packages, b.epoch, b.tree)
	if res.Source != "" {
		b.inputs = append(b.inputs, lxdimage.Input{Name: res.Source, SHA256: res.SourceKey, Detail: res.SourceDetail})
	}
	b.cacheHit = res.CacheHit
	return err
}

// files adds what ssbuild puts into every image. Writes go through an
// os.Root, so a symlink in an untrusted tree cannot lead them outside it.
func (b *build) files(context.Context) error {
	root, err := os.OpenRoot(b.tree)
	if err != nil {
		return err
	}
	defer root.Close()
	write := func(name string, data []byte, perm os.FileMode) error {
		return osbase.WriteFile(root, name, data, perm)
	}
	if m := b.r.Image.RegistryMirror; m != "" {
		cfg := fmt.Sprintf("{\n  \"registry-mirrors\": [%q]\n}\n", m)
		if err := write("/etc/docker/daemon.json", []byte(cfg), 0o644); err != nil {
			return err
		}
	}
	// Without cloud-init nothing would configure the instance's network:
	// DHCP on eth0 through systemd-networkd, which the systemd package has.
	_, errCloudInit := root.Stat("usr/bin/cloud-init")
	if _, err := root.Stat("lib/systemd/system/systemd-networkd.service"); err == nil && errors.Is(errCloudInit, os.ErrNotExist) {
		if err := write(osbase.DHCPNetworkFile, []byte(osbase.DHCPNetwork), 0o644); err != nil {
			return err
		}
		if err := osbase.EnableUnit(root, "/lib/systemd/system/systemd-networkd.service", "multi-user.target"); err != nil {
			return err
		}
	}
	_, errNetworkd := root.Stat("lib/systemd/systemd-networkd")
	if _, err := root.Stat("lib/systemd/systemd-udevd"); errNetworkd == nil && errors.Is(err, os.ErrNotExist) {
		if err := write(osbase.NetworkdNoUdevFile, []byte(osbase.NetworkdNoUdev), 0o644); err != nil {
			return err
		}
	}
	if len(b.r.Image.DockerImages) == 0 {
		return nil
	}
	// The archives were saved before the tree existed; same file system.
	parent := strings.TrimPrefix(filepath.Dir(dockerpreload.DefaultDir), "/")
	if err := root.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	if err := os.Rename(b.saved, filepath.Join(b.tree, dockerpreload.DefaultDir)); err != nil {
		return fmt.Errorf("move docker images into the tree: %w", err)
	}
	bin, err := os.ReadFile(b.opts.Binary)
	if err != nil {
		return fmt.Errorf("ssbuild binary for the image: %w", err)
	}
	if err := write(BinaryPath, bin, 0o755); err != nil {
		return err
	}
	unit := "/etc/systemd/system/" + dockerpreload.UnitName
	if err := write(unit, []byte(dockerpreload.Unit(BinaryPath, dockerpreload.DefaultDir)), 0o644); err != nil {
		return err
	}
	return osbase.EnableUnit(root, unit, "multi-user.target")
}

func (b *build) dockerImages(ctx context.Context) error {
	if len(b.r.Image.DockerImages) == 0 {
		return nil
	}
	b.saved = filepath.Join(b.work, "docker-images")
	m, err := dockerpreload.Save(ctx, b.opts.Docker, dockerpreload.FromRecipe(b.r.Image.DockerImages), b.saved, b.rep)
	if err != nil {
		return err
	}
	for _, e := range m.Images {
		b.inputs = append(b.inputs, lxdimage.Input{Name: "docker " + e.Ref, SHA256: strings.TrimPrefix(e.ImageID, "sha256:"),
			Detail: "archive sha256 " + e.SHA256})
	}
	return nil
}

func (b *build) chainstate(ctx context.Context) error {
	cs := b.r.Image.Chainstate
	if cs == nil {
		return nil
	}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	a, err := chainstate.Pack(ctx, chainstate.Options{Chainstate: *cs, BaseDir: b.r.Path("."),
		Output:          filepath.Join(b.out, imagedir.ChainstateFile(cs.Network)),
		SourceDateEpoch: b.epoch, Progress: b.rep})
	if err != nil {
		return err
	}
	b.chain = a
	b.inputs = append(b.inputs, lxdimage.Input{Name: "chainstate " + cs.Network, SHA256: a.ManifestSHA256,
		Detail: fmt.Sprintf("%s from %s (manifest sha256)", cs.Kind, cs.Source)})
	return nil
}

func (b *build) lxdImage(ctx context.Context) error {
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	var formats []lxdimage.Format
	for _, f := range b.r.Image.Output.Formats {
		formats = append(formats, lxdimage.Format(f))
	}
	src := b.r.Image.Source
	m, err := lxdimage.Build(ctx, lxdimage.Spec{
		RootFS: b.tree, OutDir: filepath.Join(b.out, imagedir.ImageDir), Formats: formats, Epoch: b.epoch,
		Properties: lxdimage.Properties{OS: osName(src), Release: src.Suite,
			Description: fmt.Sprintf("%s base image (%s)", b.r.Name, src.Suite), Name: b.r.Name},
		Inputs: b.inputs, Compression: b.r.Image.Output.Compression, Progress: b.rep,
	})
	b.image = m
	return err
}

// checksums writes SHA256SUMS over every file of the output, the image
// folder's included, so one `sha256sum -c` checks the whole delivery.
func (b *build) checksums(context.Context) error {
	var lines []string
	err := filepath.WalkDir(b.out, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(b.out, p)
		sum, _, err := digest.File(p)
		if err != nil {
			return err
		}
		lines = append(lines, sum+"  "+filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i][66:] < lines[j][66:] })
	return os.WriteFile(filepath.Join(b.out, signature.ChecksumsFile), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// sign writes SHA256SUMS.sig, inside the folder not yet renamed into
// place, so a signed output never appears without its signature.
func (b *build) sign(context.Context) error {
	if b.signer == nil {
		return nil
	}
	if err := b.signer.SignFile(filepath.Join(b.out, signature.ChecksumsFile)); err != nil {
		return err
	}
	b.rep.Info("signed %s with key %s", signature.ChecksumsFile, b.signer.Fingerprint())
	return nil
}

func osName(s recipes.Source) string {
	if s.IsDebian() {
		return "debian"
	}
	return "ubuntu"
}

// removeStale removes work folders of builds that died (their mounts too).
func removeStale(parent, prefix string) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix+"work-") {
			_ = mounts.RemoveTree(filepath.Join(parent, e.Name()))
		}
	}
}
