// Package installerbuild is `ssbuild installer`: from a recipe it builds
// the host OS (images/hostos), the installer initramfs with the static
// ssbuild binary as /init (images/initramfs), the payload that
// appliance/install reads, and the USB image (images/installer).
//
// Steps, in order, each named in errors and progress:
//
//	hosts      every recipe host gets an appliance.yaml (config.FromRecipe),
//	           so a recipe the installer would refuse on the machine is
//	           refused here, before anything is built
//	secret     the cluster secret: the recipe's file, or a fresh one (0600)
//	host-os    rootfs + installer.packages (cached layer), os.img, esp/
//	initramfs  ssbuild as /init, the storage, file system and NIC modules
//	image      installer.img (GPT: SSBUILD-ESP | SSBUILD-PAYLOAD) + SHA256SUMS;
//	           with several hosts, a boot menu entry per host (ssbuild.host=NAME)
//	sign       with a sign key, SHA256SUMS.sig (internal/signature); the
//	           same key signs the payload's manifest (image step) and its
//	           public key is in the initramfs (stick.SignerKeyPath), so the
//	           installer refuses a payload the key did not sign
//
// The output folder (0700) holds installer.img (0600: its payload holds the
// cluster secret), SHA256SUMS and, when it was generated, cluster.secret
// (0600: keep it to build more sticks for the same cluster). It appears
// complete or not at all.
package installerbuild

import (
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/images/initramfs"
	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/images/outcache"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/internal/steps"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Names in the output folder.
const (
	ImageFile  = "installer.img"
	SecretFile = "cluster.secret" // only when generated
)

// Options say where things come from and go.
type Options struct {
	OutDir   string // must not exist
	CacheDir string // the rootfs cache (shared with ssbuild image)
	// Binary is the ssbuild binary for the initramfs's /init and the host
	// OS. It must be statically linked: the initramfs holds no libraries.
	Binary string
	// BaseImage is an `ssbuild image` output folder to carry in the
	// payload as base-image/; empty: none.
	BaseImage string
	Epoch     int64 // 0: baseimage.ResolveEpoch's rules
	// SignKey is an ed25519 OpenSSH private key file that signs SHA256SUMS
	// (SHA256SUMS.sig beside it); empty: unsigned.
	SignKey string
	// ArtifactCache is the output cache's folder (outcache): os.img, the
	// target's ESP files and the initramfs are reused from it when none
	// of their inputs changed; empty: built every time.
	ArtifactCache string
	Progress      *progress.Reporter
}

// Result describes the built installer.
type Result struct {
	OutDir, Image   string
	Installer       installer.Result // size, sha256, partition sizes and GUIDs
	KernelVersion   string
	SecretGenerated bool
	HostOSCached    bool
	Epoch           int64
	// Artifacts says for the rootfs, os.img, esp and the initramfs whether
	// each was built, reused or rebuilt (installer.img always is built).
	Artifacts []baseimage.Artifact
}

// Build runs the steps. Nothing is left behind on error.
func Build(ctx context.Context, r *recipes.Recipe, opts Options) (res Result, err error) {
	rep := opts.Progress
	if rep == nil {
		rep = progress.Discard()
		opts.Progress = rep
	}
	if opts.OutDir == "" || opts.CacheDir == "" || opts.Binary == "" {
		return res, errors.New("installer: an output folder, a cache folder and the ssbuild binary are needed")
	}
	if _, err := os.Lstat(opts.OutDir); err == nil {
		return res, fmt.Errorf("installer: output %s already exists; remove it or pick another", opts.OutDir)
	}
	if res.Epoch, err = baseimage.ResolveEpoch(opts.Epoch, r); err != nil {
		return res, fmt.Errorf("installer: %w", err)
	}
	// A key that cannot sign fails now, not after minutes of building.
	var signer *signature.Signer
	if opts.SignKey != "" {
		if signer, err = signature.LoadSigner(opts.SignKey); err != nil {
			return res, fmt.Errorf("installer: %w", err)
		}
	}
	parent := filepath.Dir(opts.OutDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return res, fmt.Errorf("installer: output: %w", err)
	}
	work, err := os.MkdirTemp(parent, "."+filepath.Base(opts.OutDir)+".work-")
	if err != nil {
		return res, fmt.Errorf("installer: %w", err)
	}
	defer func() {
		if rmErr := mounts.RemoveTree(work); rmErr != nil && err == nil {
			err = fmt.Errorf("installer: clean up %s: %w", work, rmErr)
		}
	}()
	b := &build{r: r, opts: opts, epoch: res.Epoch, work: work, out: filepath.Join(work, "out"), signer: signer,
		cache: outcache.Cache{Dir: opts.ArtifactCache}}
	err = steps.Runner{Stage: "installer"}.Run(ctx,
		steps.Step{Name: "hosts", Run: b.hosts},
		steps.Step{Name: "secret", Run: b.secret},
		steps.Step{Name: "host-os", Run: b.hostOS},
		steps.Step{Name: "initramfs", Run: b.initramfs},
		steps.Step{Name: "image", Run: b.image},
		steps.Step{Name: "sign", Run: b.sign})
	if err != nil {
		return res, err
	}
	if err := finish(b.out, opts.OutDir); err != nil {
		return res, fmt.Errorf("installer: output: %w", err)
	}
	res.OutDir, res.Image = opts.OutDir, filepath.Join(opts.OutDir, ImageFile)
	res.Installer, res.KernelVersion = b.img, b.host.KernelVersion
	res.SecretGenerated, res.HostOSCached = b.secretGenerated, b.host.CacheHit
	res.Artifacts = b.artifacts
	if removed, err := b.cache.Prune(keepPerKind); err != nil {
		rep.Info("output cache: %v", err) // the build is done; the cache only grows
	} else if len(removed) > 0 {
		rep.Info("output cache: removed %d entries not used lately", len(removed))
	}
	return res, nil
}

type build struct {
	r               *recipes.Recipe
	opts            Options
	epoch           int64
	work, out       string
	secretPath      string
	secretGenerated bool
	host            hostos.Result
	initrd          string
	img             installer.Result
	signer          *signature.Signer // nil: unsigned

	// The output cache (cache.go).
	cache               outcache.Cache
	artifacts           []baseimage.Artifact
	layerKey            string
	layerBuilt          time.Time
	hostKey, initrdKey  string
	hostReused          bool // os.img and esp/ came from the cache
	initrdReused        bool
	initrdMeta          initramfsMeta
	initrdSum, osSum    string // known digests ("": not known)
	whyInitrd           string // its cache entry was corrupt
	kernel, systemdBoot string // for the installer's ESP; "": the tree's
}

// hosts refuses, at build time, a recipe the installer would refuse on
// the machine: every host must get a valid appliance.yaml.
func (b *build) hosts(context.Context) error {
	if len(b.r.Installer.Hosts) == 0 {
		return errors.New("the recipe lists no installer.hosts")
	}
	var errs []error
	for _, h := range b.r.Installer.Hosts {
		if _, err := config.FromRecipe(b.r, h.Name, config.HostFiles{StorageSource: hostdisk.ZFSSource,
			SecretFile: hostdisk.SecretPath, StateDir: hostdisk.StateDir}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return checkStatic(b.opts.Binary)
}

// checkStatic refuses a dynamically linked binary: as the initramfs's
// init it would not start (there is no dynamic loader), and the kernel
// would panic with a message that does not say why.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("ssbuild binary %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("ssbuild binary %s is dynamically linked; the installer's /init must be static (build it with `make build`)", path)
		}
	}
	return nil
}

// finish makes the built output folder private and moves it into place in
// one rename, so it appears complete or not at all. installer.img carries
// the cluster secret in its payload, like cluster.secret: whoever reads
// either can join the cluster, so both are 0600 in a 0700 folder whatever
// the umask. (The work folder they are made in is MkdirTemp's, 0700.)
func finish(out, dest string) error {
	for _, f := range []string{ImageFile, SecretFile} {
		if err := os.Chmod(filepath.Join(out, f), 0o600); err != nil && !(f == SecretFile && errors.Is(err, fs.ErrNotExist)) {
			return err
		}
	}
	if err := os.Chmod(out, 0o700); err != nil {
		return err
	}
	return os.Rename(out, dest)
}

func (b *build) secret(context.Context) error {
	if err := os.MkdirAll(b.out, 0o700); err != nil {
		return err
	}
	if f := b.r.Cluster.Secret.File; f != "" {
		// The owner's only, the builder's and strong enough.
		if err := config.CheckSecretFile(b.r.Path(f)); err != nil {
			return err
		}
		b.secretPath = b.r.Path(f)
		return nil
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	b.secretPath = filepath.Join(b.out, SecretFile)
	b.secretGenerated = true
	return config.WriteSecret(b.secretPath, []byte(hex.EncodeToString(raw)+"\n"))
}

// checkOSFits: the installer checks this again at the target; here it
// fails the build rather than every install.
func (b *build) checkOSFits() error {
	info, err := os.Stat(b.host.OSImage)
	if err != nil {
		return err
	}
	return hostdisk.FitOS(info.Size(), int64(b.r.Installer.Layout.OS))
}

// InitrdName is the installer initramfs's file name in the build (and in
// the output cache).
const InitrdName = "installer-initrd.img"

func (b *build) initramfs(ctx context.Context) error {
	if b.initrdReused {
		b.report(ArtifactInitramfs, outcache.Reused, b.initrdSum, "")
		b.skippedModules(b.initrdMeta.KernelVersion, b.initrdMeta.Skipped)
		return nil
	}
	b.initrd = filepath.Join(b.work, InitrdName)
	var files map[string][]byte
	if b.signer != nil {
		// The installer refuses a payload this key did not sign.
		files = map[string][]byte{stick.SignerKeyPath: b.signer.PublicKey().AuthorizedKey()}
	}
	res, err := initramfs.Build(ctx, initramfs.Spec{Init: b.opts.Binary, Root: b.host.Root,
		KernelVersion: b.host.KernelVersion, Modules: installerModules(), OptionalModules: initramfs.NICModules,
		Files: files, Epoch: b.epoch, Progress: b.opts.Progress}, b.initrd)
	if err != nil {
		return err
	}
	b.skippedModules(res.KernelVersion, res.Skipped)
	return b.storeInitramfs(initramfsMeta{KernelVersion: res.KernelVersion, Skipped: res.Skipped}, res.SHA256)
}

func (b *build) skippedModules(kernel string, skipped []string) {
	if len(skipped) > 0 {
		b.opts.Progress.Info("initramfs: kernel %s has no NIC driver %s; machines with those NICs can only be told apart by the boot menu",
			kernel, strings.Join(skipped, ", "))
	}
}

// menu is one boot menu entry per host when the stick installs several:
// the default entry finds the host by MAC, these name it on the kernel
// command line.
func (b *build) menu() []installer.MenuEntry {
	hosts := b.r.Installer.Hosts
	if len(hosts) < 2 {
		return nil
	}
	var m []installer.MenuEntry
	for _, h := range hosts {
		m = append(m, installer.MenuEntry{ID: "host-" + h.Name, Title: stick.MenuTitle(h.Name),
			Options: stick.CmdlineHost + "=" + h.Name})
	}
	return m
}

// installerModules are initramfs.DefaultModules and loop: the installer
// writes the host's config through a loop device over the OS partition
// (appliance/install), and Debian builds loop as a module.
func installerModules() []string {
	// efivarfs: the install writes the disk's firmware boot entry.
	return append(slices.Clone(initramfs.DefaultModules), "loop", "efivarfs")
}

func (b *build) image(ctx context.Context) error {
	recipeFile := filepath.Join(b.work, "recipe.yaml")
	text, err := b.recipeText()
	if err != nil {
		return err
	}
	if err := os.WriteFile(recipeFile, text, 0o644); err != nil {
		return err
	}
	payload := []installer.PayloadFile{
		{Name: stick.OSImage, Path: b.host.OSImage, SHA256: b.osSum},
		{Name: stick.ESPDir, Path: b.host.ESPDir},
		{Name: stick.RecipeName, Path: recipeFile},
		{Name: stick.SecretName, Path: b.secretPath},
	}
	if b.opts.BaseImage != "" {
		if fi, err := os.Stat(b.opts.BaseImage); err != nil || !fi.IsDir() {
			return fmt.Errorf("base image folder %s: not a folder (%v)", b.opts.BaseImage, err)
		}
		payload = append(payload, installer.PayloadFile{Name: stick.BaseImageDir, Path: b.opts.BaseImage})
	}
	kernel, boot := b.kernel, b.systemdBoot
	if kernel == "" {
		kernel, boot = b.host.Kernel(), b.host.SystemdBoot()
	}
	spec := installer.Spec{
		Name: b.r.Name, Epoch: b.epoch,
		Kernel: kernel, Initramfs: b.initrd, SystemdBoot: boot, Menu: b.menu(),
		Payload: payload, Output: filepath.Join(b.out, ImageFile), Progress: b.opts.Progress,
	}
	if b.signer != nil {
		spec.SignManifest, spec.ManifestSigName = b.signer.Sign, stick.ManifestSig
	}
	b.img, err = installer.Build(ctx, spec)
	return err
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
	b.opts.Progress.Info("signed %s with key %s", signature.ChecksumsFile, b.signer.Fingerprint())
	return nil
}

// recipeText is the recipe as its author wrote it (comments included).
func (b *build) recipeText() ([]byte, error) {
	if name, ok := strings.CutPrefix(b.r.File, "builtin:"); ok {
		return recipes.BuiltinSource(name)
	}
	data, err := os.ReadFile(b.r.File)
	if err != nil {
		return nil, fmt.Errorf("recipe for the payload: %w", err)
	}
	return data, nil
}
