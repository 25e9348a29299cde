package rootfs

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
)

// Layer is a tree made from a base tree by one build step (for example the
// recipe's packages installed in a chroot), cached by Key so a rebuild that
// changes only later stages skips both the base and the step.
type Layer struct {
	Name string // for messages, e.g. "packages"
	// Key names the result: it must change whenever the base or the step's
	// inputs change (e.g. sha256 of the base's cache key and the packages).
	Key string
	// Base makes the tree the step starts from in an empty dir (e.g. a
	// Debootstrap or Unpack call). It runs only on a cache miss.
	Base func(ctx context.Context, dir string) error
	// Build changes the tree in dir. On error nothing is cached.
	Build func(ctx context.Context, dir string) error
}

// Derive returns l's tree in dest (which must not exist or be empty): a copy
// of the cached entry, or else the base with the step applied, cached first.
// Entries older than MaxAge are rebuilt, like debootstrap's.
func (b *Builder) Derive(ctx context.Context, l Layer, dest string) (Result, error) {
	fail := func(err error) (Result, error) { return Result{}, fmt.Errorf("%s layer: %w", l.Name, err) }
	if b.CacheDir == "" || l.Key == "" || strings.ContainsAny(l.Key, "/.") {
		return fail(fmt.Errorf("needs a cache directory and a plain key (got %q)", l.Key))
	}
	if err := prepareDest(dest); err != nil {
		return fail(err)
	}
	c := cache{dir: filepath.Join(b.CacheDir, "layers")}
	unlock, err := c.lock(ctx, l.Key)
	if err != nil {
		return fail(err)
	}
	defer unlock()
	res := Result{Dir: dest, CacheKey: l.Key}
	ent, ok, err := c.lookup(l.Key)
	if err != nil {
		return fail(err)
	}
	if ok && b.MaxAge > 0 && time.Since(ent.Created) > b.MaxAge {
		ok = false
	}
	if ok {
		res.CacheHit = true
		c.used(l.Key)
		b.progress().Info("%s: cached (%s, built %s)", l.Name, l.Key[:min(len(l.Key), 12)], ent.Created.Format(time.RFC3339))
	} else if ent, err = b.buildLayer(ctx, c, l); err != nil {
		return fail(err)
	}
	if err := b.copyTree(ctx, c.rootfs(l.Key), dest, ent.SizeBytes); err != nil {
		return fail(err)
	}
	res.BuiltAt = ent.Created
	return res, nil
}

func (b *Builder) buildLayer(ctx context.Context, c cache, l Layer) (entry, error) {
	tmp, err := c.newTemp(l.Key)
	if err != nil {
		return entry{}, err
	}
	defer mounts.RemoveTree(tmp) // a no-op once committed
	target := filepath.Join(tmp, "rootfs")
	start := time.Now()
	if err := l.Base(ctx, target); err != nil {
		return entry{}, err
	}
	if err := l.Build(ctx, target); err != nil {
		return entry{}, err
	}
	if err := mounts.UnmountAll(target); err != nil {
		return entry{}, err
	}
	size, err := treeSize(target)
	if err != nil {
		return entry{}, err
	}
	ent := entry{Created: time.Now().UTC(), SizeBytes: size, BuildSeconds: time.Since(start).Seconds()}
	return ent, c.commit(l.Key, tmp, ent)
}

// DebootstrapKey is the cache key Debootstrap would use for spec, without
// building anything: layers derived from that tree build their keys on it.
func DebootstrapKey(ctx context.Context, spec Debootstrap) (string, error) {
	spec.Mirror = strings.TrimRight(spec.Mirror, "/")
	in, err := resolveInputs(ctx, spec)
	if err != nil {
		return "", fmt.Errorf("debootstrap %s from %s: %w", spec.Suite, spec.Mirror, err)
	}
	return in.key(), nil
}

// LayerBuilt returns when the cached layer of key was built, if an entry
// that Derive would use exists (not expired). It builds and copies nothing:
// a later stage keyed on the layer can decide whether it needs the tree.
func (b *Builder) LayerBuilt(ctx context.Context, key string) (time.Time, bool, error) {
	if b.CacheDir == "" || key == "" || strings.ContainsAny(key, "/.") {
		return time.Time{}, false, nil
	}
	c := cache{dir: filepath.Join(b.CacheDir, "layers")}
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return time.Time{}, false, err
	}
	defer unlock()
	ent, ok, err := c.lookup(key)
	if err != nil || !ok || (b.MaxAge > 0 && time.Since(ent.Created) > b.MaxAge) {
		return time.Time{}, false, err
	}
	c.used(key) // the build goes on from it: in use, though nothing is copied
	return ent.Created, true, nil
}
