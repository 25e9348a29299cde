package baseimage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/images/outcache"
	"github.com/sovereign-stack/ssbuild/internal/signature"
)

// lxdEntry is one cached artifact of the LXD image folder: one file, or
// the manifest with the folder's SHA256SUMS (written together).
type lxdEntry struct {
	kind   string
	names  []string // file names in the image folder
	key    string
	staged bool              // restored and verified into the staging folder
	sums   map[string]string // name -> sha256, when staged
	why    string            // the entry did not verify
}

// lxdPlan is what the cache holds of the LXD image folder this build
// writes, decided from the keys before any tree exists.
type lxdPlan struct {
	staging string
	entries []*lxdEntry
}

// complete says every file of the image folder came from the cache, so
// neither the tree nor lxdimage.Build is needed.
func (p *lxdPlan) complete() bool {
	if p == nil {
		return false
	}
	for _, e := range p.entries {
		if !e.staged {
			return false
		}
	}
	return true
}

// lxdSpec is the Spec the build writes, with the defaults lxdimage would
// fill in made explicit: every field is part of some key.
func (b *build) lxdSpec() lxdimage.Spec {
	var formats []lxdimage.Format
	for _, f := range b.r.Image.Output.Formats {
		formats = append(formats, lxdimage.Format(f))
	}
	if len(formats) == 0 {
		formats = []lxdimage.Format{lxdimage.Container}
	}
	compression := b.r.Image.Output.Compression
	if compression == "" {
		compression = "xz"
	}
	src := b.r.Image.Source
	return lxdimage.Spec{OutDir: filepath.Join(b.out, imagedir.ImageDir), Formats: formats, Epoch: b.epoch,
		Properties: lxdimage.Properties{OS: osName(src), Release: src.Suite,
			Description: fmt.Sprintf("%s base image (%s)", b.r.Name, src.Suite), Name: b.r.Name},
		Compression: compression}
}

// lookupLXD computes the keys of the image folder's files for the packages
// layer (key, built at) and restores, verified, whatever the cache has into
// a staging folder. A corrupt entry is noted (and was removed by the cache).
func (b *build) lookupLXD(ctx context.Context, layerKey string, layerBuilt time.Time) error {
	spec := b.lxdSpec()
	arch, err := lxdimage.DefaultArchitecture()
	if err != nil {
		return err
	}
	tools, err := lxdimage.ToolVersions(ctx, spec.Formats)
	if err != nil {
		return err
	}
	// The tree: the cached layer (by key and build time: an expired layer
	// built again from a newer mirror is another tree) plus what the files
	// step adds.
	tree := struct {
		Layer          string
		LayerBuilt     time.Time
		RegistryMirror string
		Docker         []dockerpreload.Entry
		Binary         string
	}{Layer: layerKey, LayerBuilt: layerBuilt.UTC(), RegistryMirror: b.r.Image.RegistryMirror, Docker: b.docker}
	if len(b.r.Image.DockerImages) > 0 {
		if tree.Binary, err = b.cache.InputDigest(b.opts.Binary); err != nil {
			return fmt.Errorf("ssbuild binary for the image: %w", err)
		}
	}
	treeKey, err := outcache.Key("tree", tree)
	if err != nil {
		return err
	}
	vm := slices.Contains(spec.Formats, lxdimage.VM)
	key := func(kind string, in any) string {
		if err == nil {
			var k string
			k, err = outcache.Key(kind, in)
			return k
		}
		return ""
	}
	common := struct {
		Arch       string
		Epoch      int64
		Properties lxdimage.Properties
	}{arch, b.epoch, spec.Properties}
	metaKey := key("lxd-metadata", struct {
		Common any
		VM     bool
	}{common, vm})
	p := &lxdPlan{}
	p.entries = append(p.entries, &lxdEntry{kind: "lxd-metadata", names: []string{imagedir.MetadataFile}, key: metaKey})
	if slices.Contains(spec.Formats, lxdimage.Container) {
		p.entries = append(p.entries,
			&lxdEntry{kind: "lxd-squashfs", names: []string{imagedir.SquashfsFile}, key: key("lxd-squashfs", struct {
				Tree, Compression, Tool string
				Epoch                   int64
			}{treeKey, spec.Compression, tools["mksquashfs"], b.epoch})},
			&lxdEntry{kind: "lxd-unified", names: []string{imagedir.UnifiedFile}, key: key("lxd-unified", struct {
				Tree, Metadata string
				Epoch          int64
			}{treeKey, metaKey, b.epoch})})
	}
	if vm {
		p.entries = append(p.entries, &lxdEntry{kind: "lxd-disk", names: []string{imagedir.DiskFile}, key: key("lxd-disk", struct {
			Tree   string
			Common any
			VM     lxdimage.VMOptions
			Tools  map[string]string
		}{treeKey, common, spec.VM, tools})})
	}
	var fileKeys []string
	for _, e := range p.entries {
		fileKeys = append(fileKeys, e.key)
	}
	// The manifest also lists the tree's packages and every input.
	p.entries = append(p.entries, &lxdEntry{kind: "lxd-manifest", names: []string{imagedir.ManifestFile, signature.ChecksumsFile},
		key: key("lxd-manifest", struct {
			Tree    string
			Files   []string
			Formats []lxdimage.Format
			Common  any
			Tools   map[string]string
			Chain   []lxdimage.Input
			RootFS  []lxdimage.Input
		}{treeKey, fileKeys, spec.Formats, common, tools, b.chainIn, b.rootfsIn})})
	if err != nil {
		return err
	}
	if p.staging, err = os.MkdirTemp(b.work, "cached-"); err != nil {
		return err
	}
	for _, e := range p.entries {
		ent, ok, err := b.cache.Restore(e.key, p.staging, nil)
		if ok && slices.Equal(names(ent.Files), e.names) {
			e.staged, e.sums = true, map[string]string{}
			for _, f := range ent.Files {
				e.sums[f.Name] = f.SHA256
			}
			continue
		}
		if e.why, err = corruption(err); err != nil {
			return err
		}
		if e.why != "" {
			b.rep.Info("%s/%s: %s; building it again", imagedir.ImageDir, e.names[0], e.why)
		}
	}
	b.lxd = p
	return nil
}

func names(files []outcache.File) []string {
	var n []string
	for _, f := range files {
		n = append(n, f.Name)
	}
	return n
}

// restoreAll moves every cached file into the image folder.
func (p *lxdPlan) restoreAll(b *build) error {
	dir := filepath.Join(b.out, imagedir.ImageDir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	for _, e := range p.entries {
		for _, n := range e.names {
			if err := os.Rename(filepath.Join(p.staging, n), filepath.Join(dir, n)); err != nil {
				return err
			}
			b.known[imagedir.ImageDir+"/"+n] = e.sums[n]
			b.report(imagedir.ImageDir+"/"+n, outcache.Reused, e.sums[n], "")
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, imagedir.ManifestFile))
	if err != nil {
		return err
	}
	var m lxdimage.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("cached %s: %w", imagedir.ManifestFile, err)
	}
	b.image = &m
	return nil
}

// reuse is what lxdimage.Build takes from the staging folder instead of
// writing it (the manifest it always writes).
func (p *lxdPlan) reuse() map[string]string {
	if p == nil {
		return nil
	}
	m := map[string]string{}
	for _, e := range p.entries {
		if e.staged && e.kind != "lxd-manifest" {
			m[e.names[0]] = filepath.Join(p.staging, e.names[0])
		}
	}
	return m
}

// storeBuilt puts what lxdimage.Build wrote into the cache and reports
// every file of the folder.
func (p *lxdPlan) storeBuilt(b *build) error {
	dir := filepath.Join(b.out, imagedir.ImageDir)
	for _, e := range p.entries {
		if e.staged && e.kind != "lxd-manifest" {
			n := e.names[0]
			b.known[imagedir.ImageDir+"/"+n] = e.sums[n]
			b.report(imagedir.ImageDir+"/"+n, outcache.Reused, e.sums[n], "")
			continue
		}
		var paths []string
		for _, n := range e.names {
			paths = append(paths, filepath.Join(dir, n))
		}
		files, err := b.cache.Store(e.kind, e.key, e.kind, nil, paths...)
		if err != nil {
			return err
		}
		for _, f := range files {
			b.known[imagedir.ImageDir+"/"+f.Name] = f.SHA256
			b.report(imagedir.ImageDir+"/"+f.Name, builtState(e.why), f.SHA256, e.why)
		}
	}
	return nil
}
