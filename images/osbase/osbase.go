// Package osbase makes the tree both images start from: the recipe's root
// filesystem (debootstrap or a verified tarball) with a set of packages
// installed in a chroot, cached as one layer keyed by every input, so a
// rebuild that changes only later stages copies a tree instead of running
// debootstrap and apt again. The base image (images/baseimage) and the host
// OS (images/hostos) differ only in the packages and the layer name.
package osbase

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// layerFormat changes when what a layer holds changes.
const layerFormat = 1

// Result is the tree in dest and what it came from.
type Result struct {
	rootfs.Result
	// Source says where the base tree came from, for build manifests:
	// "debootstrap bookworm" or "rootfs <tarball>", with its key (the
	// debootstrap cache key or the tarball's sha256) and details.
	Source, SourceKey, SourceDetail string
}

// Plan is what Build would make, known before anything is built: the
// source (as in Result) and the layer's cache key.
type Plan struct {
	Source, SourceKey, SourceDetail string
	Key                             string
	base                            func(context.Context, string) error
}

// Layer is one cached tree: a source with packages installed in a chroot,
// then Finish, if any, in the same chroot.
type Layer struct {
	Name     string // tells layers apart, e.g. "packages", "host-os-packages"
	Source   recipes.Source
	Packages []string
	// Epoch is part of the key: packages are installed with it as
	// SOURCE_DATE_EPOCH, and tools that honour it (useradd, ...) write it
	// into the tree.
	Epoch int64
	// Finish runs after the packages are installed, inside the cached
	// layer; FinishKey names what it does in the key (change it when
	// Finish changes what it makes).
	Finish    func(ctx context.Context, s *chroot.Session) error
	FinishKey string
}

// PlanLayer computes the layer's key and source without building anything.
// r resolves a tarball's path.
func PlanLayer(ctx context.Context, rb *rootfs.Builder, r *recipes.Recipe, l Layer) (Plan, error) {
	src := l.Source
	var p Plan
	if src.Kind == "tarball" {
		tb := rootfs.Tarball{Path: r.Path(src.Tarball), SHA256: src.SHA256}
		p.Source, p.SourceKey = "rootfs "+src.Tarball, src.SHA256
		p.base = func(ctx context.Context, dir string) error { _, err := rb.Unpack(ctx, tb, dir); return err }
	} else {
		spec := rootfs.Debootstrap{Suite: src.Suite, Mirror: src.Mirror, Keyring: src.Keyring,
			Variant: src.Variant, Components: src.Components}
		key, err := rootfs.DebootstrapKey(ctx, spec)
		if err != nil {
			return p, err
		}
		p.Source, p.SourceKey = "debootstrap "+src.Suite, key
		p.SourceDetail = fmt.Sprintf("%s %s %s", src.Mirror, src.Variant, strings.Join(src.Components, ","))
		p.base = func(ctx context.Context, dir string) error { _, err := rb.Debootstrap(ctx, spec, dir); return err }
	}
	key := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%s:%s\x00%s\x00%d\x00%s", l.Name, layerFormat,
		src.Kind, p.SourceKey, strings.Join(l.Packages, ","), l.Epoch, l.FinishKey)))
	p.Key = hex.EncodeToString(key[:])
	return p, nil
}

// Build puts the layer's tree into dest, from the cache when it holds it.
func Build(ctx context.Context, rb *rootfs.Builder, r *recipes.Recipe, l Layer, dest string) (Result, error) {
	var res Result
	p, err := PlanLayer(ctx, rb, r, l)
	if err != nil {
		return res, err
	}
	res.Source, res.SourceKey, res.SourceDetail = p.Source, p.SourceKey, p.SourceDetail
	install := func(ctx context.Context, dir string) (err error) {
		s, err := chroot.Open(ctx, dir, chroot.Options{Progress: rb.Progress,
			Env: []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(l.Epoch, 10)}})
		if err != nil {
			return err
		}
		// Close leaves the tree clean: no apt lists, logs, machine identity.
		defer func() { err = errors.Join(err, s.Close()) }()
		if err := s.Install(ctx, l.Packages...); err != nil {
			return err
		}
		if l.Finish != nil {
			return l.Finish(ctx, s)
		}
		return nil
	}
	res.Result, err = rb.Derive(ctx, rootfs.Layer{Name: l.Name, Key: p.Key, Base: p.base, Build: install}, dest)
	return res, err
}
