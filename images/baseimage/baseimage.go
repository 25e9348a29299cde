// Package baseimage runs `ssbuild image`: it turns a recipe's image section
// into the base image every site instance boots from, in named steps:
//
//	docker-images the recipe's Docker images resolved and their pins checked
//	chainstate    the recipe's chainstate, verified and packed as its own artifact
//	rootfs        debootstrap or a verified tarball, with the recipe's packages
//	              installed in a chroot; both cached by their inputs, so a
//	              rebuild that changes only later stages copies a cached tree
//	files         the saved Docker images, the ssbuild binary, its
//	              first-boot unit and the registry mirror setting
//	lxd-image     the tree written as LXD images (container and/or VM)
//
// Every output artifact (the chainstate tar, each LXD image file, the image
// manifest) is cached under a key of all its inputs (images/outcache): a
// rebuild whose inputs did not change copies verified cached files and
// skips the tree altogether; a changed package list rebuilds what depends
// on the tree and reuses the rest. Result.Artifacts (and the progress
// events "artifact") say which were built, reused or rebuilt.
//
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
	"github.com/sovereign-stack/ssbuild/images/outcache"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/digest"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/internal/steps"
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
	SignKey string
	// ArtifactCache is the output cache's folder (images/outcache): built
	// artifacts are kept there under a key of their inputs and reused,
	// verified, by a later build. Empty: every artifact is built.
	ArtifactCache string
	Progress      *progress.Reporter
}

// keepPerKind is how many entries of each kind of artifact the output
// cache keeps (most recently used first).
const keepPerKind = 4

// rootfsKeep is how long the rootfs cache keeps a debootstrapped tree, a
// package layer, a tarball or a deb no build used: each changed
// image.packages leaves a tree of hundreds of MiB, and a vendor's CI
// cache would only grow.
const rootfsKeep = 30 * 24 * time.Hour

// Result is a finished build.
type Result struct {
	OutDir     string
	Image      *lxdimage.Manifest
	Chainstate *chainstate.Artifact // nil without a chainstate
	CacheHit   bool                 // the rootfs with its packages came from the cache
	Epoch      int64
	// Artifacts says, per output file (path relative to OutDir) and for
	// the rootfs layer, whether it was built, reused or rebuilt.
	Artifacts []Artifact
}

// Artifact is one line of the build's report.
type Artifact struct {
	Name   string         `json:"name"` // e.g. image/rootfs.squashfs, or "rootfs" (the cached tree)
	State  outcache.State `json:"state"`
	SHA256 string         `json:"sha256,omitempty"`
	Why    string         `json:"why,omitempty"` // rebuilt: the cache entry that did not verify
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
		tree: filepath.Join(work, "rootfs"), out: filepath.Join(work, "out"),
		cache: outcache.Cache{Dir: opts.ArtifactCache}, known: map[string]string{}}
	err = steps.Runner{Stage: "image"}.Run(ctx,
		steps.Step{Name: "docker-images", Run: b.dockerImages},
		steps.Step{Name: "chainstate", Run: b.chainstate},
		steps.Step{Name: "rootfs", Run: b.rootfs},
		steps.Step{Name: "files", Run: b.files},
		steps.Step{Name: "lxd-image", Run: b.lxdImage},
		steps.Step{Name: "checksums", Run: b.checksums},
		steps.Step{Name: "sign", Run: b.sign})
	if err != nil {
		return res, err
	}
	if err := os.Rename(b.out, opts.OutDir); err != nil {
		return res, fmt.Errorf("image: output: %w", err)
	}
	if b.chain != nil { // it was packed inside the folder just renamed
		b.chain.Path = filepath.Join(opts.OutDir, filepath.Base(b.chain.Path))
	}
	res.OutDir, res.Image, res.Chainstate, res.CacheHit = opts.OutDir, b.image, b.chain, b.cacheHit
	res.Artifacts = b.artifacts
	if removed, err := b.cache.Prune(keepPerKind); err != nil {
		rep.Info("output cache: %v", err) // the build is done; the cache only grows
	} else if len(removed) > 0 {
		rep.Info("output cache: removed %d entries not used lately", len(removed))
	}
	rb := &rootfs.Builder{CacheDir: opts.CacheDir}
	if removed, err := rb.Prune(ctx, rootfsKeep); err != nil {
		rep.Info("rootfs cache: %v", err)
	} else if len(removed) > 0 {
		rep.Info("rootfs cache: removed %d entries no build used for %v", len(removed), rootfsKeep)
	}
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
	cacheHit   bool // the packages layer came from the cache
	image      *lxdimage.Manifest
	chain      *chainstate.Artifact
	signer     *signature.Signer // nil: unsigned

	// Manifest inputs, recorded in this order.
	dockerIn, chainIn, rootfsIn []lxdimage.Input
	docker                      []dockerpreload.Entry // resolved, not yet saved

	cache     outcache.Cache
	known     map[string]string // output file (relative) -> sha256 already computed
	artifacts []Artifact
	lxd       *lxdPlan // the LXD image files: keys and what the cache gave
}

// report records where an output file came from.
func (b *build) report(name string, state outcache.State, sum, why string) {
	b.artifacts = append(b.artifacts, Artifact{Name: name, State: state, SHA256: sum, Why: why})
	b.rep.Artifact(name, string(state), sum, why)
}

// layer is the base image's cached tree: image.source with image.packages.
func (b *build) layer() osbase.Layer {
	return osbase.Layer{Name: "packages", Source: b.r.Image.Source, Packages: b.r.Image.Packages, Epoch: b.epoch}
}

func (b *build) rootfs(ctx context.Context) error {
	rb := &rootfs.Builder{CacheDir: b.opts.CacheDir, Progress: b.rep}
	plan, err := osbase.PlanLayer(ctx, rb, b.r, b.layer())
	if err != nil {
		return err
	}
	b.rootfsIn = []lxdimage.Input{{Name: plan.Source, SHA256: plan.SourceKey, Detail: plan.SourceDetail}}
	// With the layer in the cache, the LXD image files may all be cached
	// too: then the tree is never copied.
	built, ok, err := rb.LayerBuilt(ctx, plan.Key)
	if err != nil {
		return err
	}
	if ok && b.cache.Dir != "" {
		if err := b.lookupLXD(ctx, plan.Key, built); err != nil {
			return err
		}
		if b.lxd.complete() {
			b.cacheHit = true
			b.report("rootfs", outcache.Reused, "", "")
			return nil
		}
	}
	res, err := osbase.Build(ctx, rb, b.r, b.layer(), b.tree)
	if err != nil {
		return err
	}
	b.cacheHit = res.CacheHit
	state := outcache.Built
	if res.CacheHit {
		state = outcache.Reused
	}
	b.report("rootfs", state, "", "")
	if b.cache.Dir != "" && (b.lxd == nil || !res.BuiltAt.Equal(built)) {
		// The layer was (re)built just now: the keys change with it.
		return b.lookupLXD(ctx, plan.Key, res.BuiltAt)
	}
	return nil
}

// files adds what ssbuild puts into every image. Writes go through an
// os.Root, so a symlink in an untrusted tree cannot lead them outside it.
func (b *build) files(ctx context.Context) error {
	if b.lxd.complete() {
		return nil // no tree: every LXD image file comes from the cache
	}
	if err := b.saveDockerImages(ctx); err != nil {
		return err
	}
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

// dockerImages finds the images and checks their pins, first thing; they
// are saved only when the tree is built (saveDockerImages).
func (b *build) dockerImages(ctx context.Context) error {
	if len(b.r.Image.DockerImages) == 0 {
		return nil
	}
	var err error
	b.docker, err = dockerpreload.Resolve(ctx, b.opts.Docker, dockerpreload.FromRecipe(b.r.Image.DockerImages), b.rep)
	return err
}

func (b *build) saveDockerImages(ctx context.Context) error {
	if len(b.r.Image.DockerImages) == 0 {
		return nil
	}
	b.saved = filepath.Join(b.work, "docker-images")
	m, err := dockerpreload.Save(ctx, b.opts.Docker, dockerpreload.FromRecipe(b.r.Image.DockerImages), b.saved, b.rep)
	if err != nil {
		return err
	}
	b.dockerIn = nil
	for _, e := range m.Images {
		b.dockerIn = append(b.dockerIn, lxdimage.Input{Name: "docker " + e.Ref, SHA256: strings.TrimPrefix(e.ImageID, "sha256:"),
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
	name := "chainstate-" + cs.Network + ".tar"
	output := filepath.Join(b.out, name)
	src := cs.Source
	if !filepath.IsAbs(src) {
		src = filepath.Join(b.r.Path("."), src)
	}
	// The source's content, not its path or times, is the input; a
	// source that cannot be read is left for Pack to report.
	var key string
	if b.cache.Dir == "" {
		// no output cache: nothing to look up
	} else if sum, err := b.cache.InputDigest(src); err == nil {
		key, err = outcache.Key("chainstate", struct {
			Chainstate    recipes.Chainstate
			SourceContent string
			Epoch         int64
			File          string
		}{*cs, sum, b.epoch, name})
		if err != nil {
			return err
		}
	}
	why := ""
	if key != "" {
		var a chainstate.Artifact
		ent, ok, err := b.cache.Restore(key, b.out, &a)
		if ok && len(ent.Files) == 1 && ent.Files[0].Name == name {
			a.Path = output
			b.useChain(&a)
			b.known[name] = ent.Files[0].SHA256
			b.report(name, outcache.Reused, ent.Files[0].SHA256, "")
			return nil
		}
		if why, err = corruption(err); err != nil {
			return err
		}
		if why != "" {
			b.rep.Info("%s: %s; building it again", name, why)
		}
	}
	a, err := chainstate.Pack(ctx, chainstate.Options{Chainstate: *cs, BaseDir: b.r.Path("."),
		Output: output, SourceDateEpoch: b.epoch, Progress: b.rep})
	if err != nil {
		return err
	}
	b.useChain(a)
	b.known[name] = a.SHA256
	if key != "" {
		if _, err := b.cache.Store("chainstate", key, cs, a, output); err != nil {
			return err
		}
	}
	b.report(name, builtState(why), a.SHA256, why)
	return nil
}

func (b *build) useChain(a *chainstate.Artifact) {
	cs := b.r.Image.Chainstate
	b.chain = a
	b.chainIn = []lxdimage.Input{{Name: "chainstate " + cs.Network, SHA256: a.ManifestSHA256,
		Detail: fmt.Sprintf("%s from %s (manifest sha256)", cs.Kind, cs.Source)}}
}

// corruption turns a Restore error into why the entry was rebuilt; other
// errors (the cache unreadable) stay errors.
func corruption(err error) (string, error) {
	var ce *outcache.CorruptError
	if errors.As(err, &ce) {
		return ce.Error(), nil
	}
	return "", err
}

func builtState(why string) outcache.State {
	if why != "" {
		return outcache.Rebuilt
	}
	return outcache.Built
}

func (b *build) lxdImage(ctx context.Context) error {
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	if b.lxd.complete() {
		return b.lxd.restoreAll(b)
	}
	inputs := append(append(append([]lxdimage.Input{}, b.dockerIn...), b.chainIn...), b.rootfsIn...)
	spec := b.lxdSpec()
	spec.RootFS, spec.Inputs, spec.Progress, spec.Reuse = b.tree, inputs, b.rep, b.lxd.reuse()
	m, err := lxdimage.Build(ctx, spec)
	if err != nil {
		return err
	}
	b.image = m
	if b.lxd == nil { // no output cache
		for _, o := range m.Outputs {
			b.known[imagedir.ImageDir+"/"+o.File] = o.SHA256
			b.report(imagedir.ImageDir+"/"+o.File, outcache.Built, o.SHA256, "")
		}
		return nil
	}
	return b.lxd.storeBuilt(b)
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
		sum, ok := b.known[filepath.ToSlash(rel)]
		if !ok { // not hashed while built, stored or restored
			if sum, _, err = digest.File(p); err != nil {
				return err
			}
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
