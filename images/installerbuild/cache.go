package installerbuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/images/hostos"
	"github.com/sovereign-stack/ssbuild/images/initramfs"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/images/osbase"
	"github.com/sovereign-stack/ssbuild/images/outcache"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
)

// What the installer build keeps in the output cache: the artifacts that
// do not carry the cluster secret, each under a key of all its inputs, so
// a rebuild that changes only the secret or the hosts reuses them.
// installer.img itself carries the secret and is always written.
const (
	kindHostOS    = "installer-host-os"   // os.img and the target's ESP files
	kindInitramfs = "installer-initramfs" // the installer's initramfs
	keepPerKind   = 4                     // as the image build keeps
)

// Report names of the artifacts.
const (
	ArtifactOSImage   = stick.OSImage
	ArtifactESP       = stick.ESPDir
	ArtifactInitramfs = "initramfs"
)

// hostOSMeta is the host-os entry's meta: the ESP's files are stored
// under their base names, this maps them back.
type hostOSMeta struct {
	KernelVersion string
	ESP           map[string]string // stored name -> path in esp/
}

type initramfsMeta struct {
	KernelVersion string
	Skipped       []string
}

// cacheKeys are the keys of the host-os and initramfs entries for the
// packages layer (key, built at): that layer plus every other input.
func (b *build) cacheKeys(ctx context.Context, layerKey string, layerBuilt time.Time) error {
	bin, err := b.cache.InputDigest(b.opts.Binary)
	if err != nil {
		return fmt.Errorf("ssbuild binary: %w", err)
	}
	tools := map[string]string{}
	for _, t := range []string{"mkfs.ext4", "debugfs"} {
		if tools[t], err = lxdimage.ToolVersion(ctx, t); err != nil {
			return err
		}
	}
	layer := struct {
		Key   string
		Built time.Time
	}{layerKey, layerBuilt.UTC()}
	if b.hostKey, err = outcache.Key(kindHostOS, struct {
		Layer   any
		Binary  string
		Name    string
		SSHKeys []string
		Epoch   int64
		Tools   map[string]string
	}{layer, bin, b.r.Name, b.r.Installer.SSHKeys, b.epoch, tools}); err != nil {
		return err
	}
	signer := ""
	if b.signer != nil {
		signer = string(b.signer.PublicKey().AuthorizedKey())
	}
	b.initrdKey, err = outcache.Key(kindInitramfs, struct {
		Layer             any
		Binary, Signer    string
		Modules, Optional []string
		Epoch             int64
	}{layer, bin, signer, installerModules(), initramfs.NICModules, b.epoch})
	return err
}

// hostOS builds the host OS, or takes os.img and esp/ (and then the
// initramfs) from the output cache; with both cached, no tree is made.
func (b *build) hostOS(ctx context.Context) error {
	dir := filepath.Join(b.work, "hostos")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	spec := hostos.Spec{Recipe: b.r, CacheDir: b.opts.CacheDir, Binary: b.opts.Binary,
		Epoch: b.epoch, WorkDir: dir, Progress: b.opts.Progress}
	var whyHost string
	if b.cache.Dir != "" {
		rb := &rootfs.Builder{CacheDir: b.opts.CacheDir, Progress: b.opts.Progress}
		plan, err := osbase.PlanLayer(ctx, rb, b.r, hostos.Layer(b.r, b.epoch))
		if err != nil {
			return err
		}
		b.layerKey = plan.Key
		built, ok, err := rb.LayerBuilt(ctx, plan.Key)
		if err != nil {
			return err
		}
		if ok {
			b.layerBuilt = built
			if err := b.cacheKeys(ctx, plan.Key, built); err != nil {
				return err
			}
			if whyHost, err = b.restoreHostOS(dir); err != nil {
				return err
			}
			if b.whyInitrd, err = b.restoreInitramfs(); err != nil {
				return err
			}
			if b.hostReused && b.initrdReused {
				b.report("rootfs", outcache.Reused, "", "")
				b.reportHostReused()
				return nil // no tree: everything it would feed is cached
			}
			// The tree only for the initramfs's modules.
			spec.TreeOnly = b.hostReused
		}
	}
	host, err := hostos.Build(ctx, spec)
	if err != nil {
		return err
	}
	if b.hostReused && !host.LayerBuilt.Equal(b.layerBuilt) {
		// The layer was built again meanwhile (it had expired): the cached
		// os.img may hold another kernel than these modules are for.
		b.hostReused, b.hostKey = false, ""
		spec.TreeOnly, spec.WorkDir = false, filepath.Join(b.work, "hostos-again")
		if err := os.MkdirAll(spec.WorkDir, 0o755); err != nil {
			return err
		}
		if host, err = hostos.Build(ctx, spec); err != nil {
			return err
		}
	}
	b.report("rootfs", map[bool]outcache.State{true: outcache.Reused, false: outcache.Built}[host.CacheHit], "", "")
	if b.hostReused {
		b.host.Root = host.Root
		b.reportHostReused()
		return nil
	}
	b.host = host
	b.kernel, b.systemdBoot = host.Kernel(), host.SystemdBoot()
	if err := b.checkOSFits(); err != nil {
		return err
	}
	if b.cache.Dir != "" && (b.hostKey == "" || !host.LayerBuilt.Equal(b.layerBuilt)) {
		// The layer was (re)built just now: the keys change with it.
		if err := b.cacheKeys(ctx, b.layerKey, host.LayerBuilt); err != nil {
			return err
		}
		b.layerBuilt = host.LayerBuilt
		b.initrdReused = false // made for another layer
	}
	return b.storeHostOS(whyHost)
}

// restoreHostOS restores os.img and esp/ into dir when the cache has them
// (verified); it returns why an entry was found corrupt, if it was.
func (b *build) restoreHostOS(dir string) (string, error) {
	staging, err := os.MkdirTemp(b.work, "cached-host-os-")
	if err != nil {
		return "", err
	}
	var meta hostOSMeta
	ent, ok, err := b.cache.Restore(b.hostKey, staging, &meta)
	if !ok {
		return b.corrupt(ArtifactOSImage, err)
	}
	host := hostos.Result{OSImage: filepath.Join(dir, stick.OSImage), ESPDir: filepath.Join(dir, stick.ESPDir),
		KernelVersion: meta.KernelVersion, CacheHit: true}
	var osSum string
	for _, f := range ent.Files {
		to := host.OSImage
		if f.Name != stick.OSImage {
			rel, known := meta.ESP[f.Name]
			if !known || !filepath.IsLocal(rel) {
				return "", fmt.Errorf("output cache: host OS entry: file %s not in its ESP list", f.Name)
			}
			to = filepath.Join(host.ESPDir, rel)
		} else {
			osSum = f.SHA256
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return "", err
		}
		if err := os.Rename(filepath.Join(staging, f.Name), to); err != nil {
			return "", err
		}
	}
	b.host, b.hostReused, b.osSum = host, true, osSum
	// The installer's own ESP boots the same kernel and systemd-boot
	// (the host ESP holds copies of the tree's files).
	b.kernel = filepath.Join(host.ESPDir, hostos.KernelFile)
	b.systemdBoot = filepath.Join(host.ESPDir, stick.BootloaderESP)
	if err := b.checkOSFits(); err != nil {
		return "", err
	}
	return "", nil
}

func (b *build) reportHostReused() {
	b.report(ArtifactOSImage, outcache.Reused, b.osSum, "")
	b.report(ArtifactESP, outcache.Reused, "", "")
}

func (b *build) restoreInitramfs() (string, error) {
	var meta initramfsMeta
	path := filepath.Join(b.work, InitrdName)
	ent, ok, err := b.cache.Restore(b.initrdKey, b.work, &meta)
	if !ok || len(ent.Files) != 1 || ent.Files[0].Name != InitrdName {
		return b.corrupt(ArtifactInitramfs, err)
	}
	b.initrd, b.initrdReused, b.initrdMeta, b.initrdSum = path, true, meta, ent.Files[0].SHA256
	return "", nil
}

// corrupt turns a Restore error into why the entry is built again (and
// says so); other errors (the cache unreadable) stay errors.
func (b *build) corrupt(name string, err error) (string, error) {
	var ce *outcache.CorruptError
	if errors.As(err, &ce) {
		b.opts.Progress.Info("%s: %s; building it again", name, ce.Error())
		return ce.Error(), nil
	}
	return "", err
}

// storeHostOS stores os.img and esp/ just built, and reports them.
func (b *build) storeHostOS(whyHost string) error {
	state := outcache.Built
	if whyHost != "" {
		state = outcache.Rebuilt
	}
	if b.cache.Dir == "" {
		b.report(ArtifactOSImage, state, "", "")
		b.report(ArtifactESP, state, "", "")
		return nil
	}
	meta := hostOSMeta{KernelVersion: b.host.KernelVersion, ESP: map[string]string{}}
	paths := []string{b.host.OSImage}
	err := filepath.WalkDir(b.host.ESPDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("ESP file %s: not a regular file", p)
		}
		rel, err := filepath.Rel(b.host.ESPDir, p)
		if err != nil {
			return err
		}
		name := d.Name()
		if _, dup := meta.ESP[name]; dup || name == stick.OSImage {
			return errSameName
		}
		meta.ESP[name] = rel
		paths = append(paths, p)
		return nil
	})
	if errors.Is(err, errSameName) {
		// Two ESP files of one name: not kept (the cache names files by
		// base name); built every time instead.
		b.report(ArtifactOSImage, state, "", whyHost)
		b.report(ArtifactESP, state, "", whyHost)
		return nil
	}
	if err != nil {
		return err
	}
	files, err := b.cache.Store(kindHostOS, b.hostKey, "host OS for "+b.r.Name, meta, paths...)
	if err != nil {
		return err
	}
	b.osSum = files[0].SHA256 // hashed while copied: the payload's manifest takes it
	b.report(ArtifactOSImage, state, b.osSum, whyHost)
	b.report(ArtifactESP, state, "", whyHost)
	return nil
}

var errSameName = errors.New("two ESP files of the same name")

// storeInitramfs stores the initramfs just built.
func (b *build) storeInitramfs(meta initramfsMeta, sum string) error {
	state := outcache.Built
	if b.whyInitrd != "" {
		state = outcache.Rebuilt
	}
	if b.cache.Dir != "" && b.initrdKey != "" {
		if _, err := b.cache.Store(kindInitramfs, b.initrdKey, "installer initramfs for "+b.r.Name, meta, b.initrd); err != nil {
			return err
		}
	}
	b.report(ArtifactInitramfs, state, sum, b.whyInitrd)
	return nil
}

// report records where an artifact came from, as the image build does.
func (b *build) report(name string, state outcache.State, sum, why string) {
	b.artifacts = append(b.artifacts, baseimage.Artifact{Name: name, State: state, SHA256: sum, Why: why})
	b.opts.Progress.Artifact(name, string(state), sum, why)
}
