package rootfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
)

// Prune removes cache entries (debootstrapped trees, downloaded tarballs
// and the deb cache's packages) not built, downloaded or used within the
// last keep, and returns the
// paths it removed. Each entry is removed under its lock, so a build using
// it is waited for, never cut short.
func (b *Builder) Prune(ctx context.Context, keep time.Duration) ([]string, error) {
	var removed []string
	for _, kind := range []string{"debootstrap", "tarballs"} {
		c := cache{dir: filepath.Join(b.CacheDir, kind)}
		entries, err := os.ReadDir(c.dir)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("prune %s: %w", c.dir, err)
		}
		for _, e := range entries {
			key := e.Name()
			if strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".lock") {
				continue // temp dirs go with their key's next build
			}
			gone, err := b.pruneEntry(ctx, c, kind, key, keep)
			if err != nil {
				return removed, err
			}
			if gone {
				removed = append(removed, filepath.Join(c.dir, key))
			}
		}
	}
	gone, err := b.pruneDebs(ctx, keep)
	return append(removed, gone...), err
}

// pruneDebs removes the deb cache's packages no build has used within keep
// (a build touches each package it lists), under the deb cache's lock.
func (b *Builder) pruneDebs(ctx context.Context, keep time.Duration) ([]string, error) {
	dir := filepath.Join(b.CacheDir, debsDir)
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil, nil
	}
	unlock, err := cache{dir: b.CacheDir}.lock(ctx, debsDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", dir, err)
	}
	var removed []string
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || time.Since(info.ModTime()) <= keep {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if err := os.Remove(path); err != nil {
			return removed, fmt.Errorf("prune: %w", err)
		}
		removed = append(removed, path)
	}
	return removed, nil
}

func (b *Builder) pruneEntry(ctx context.Context, c cache, kind, key string, keep time.Duration) (bool, error) {
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return false, err
	}
	defer unlock()
	made := time.Time{}
	if kind == "debootstrap" {
		ent, ok, err := c.lookup(key)
		if err != nil || !ok {
			return false, err
		}
		made = ent.Created
	} else {
		info, err := os.Stat(filepath.Join(c.dir, key))
		if err != nil {
			return false, nil // removed meanwhile
		}
		made = info.ModTime()
	}
	if time.Since(made) <= keep {
		return false, nil
	}
	if err := mounts.RemoveTree(filepath.Join(c.dir, key)); err != nil {
		return false, fmt.Errorf("prune: %w", err)
	}
	// The (empty) lock file stays: removing it while another process
	// waits on it would let two builds of one key run at once.
	return true, nil
}
