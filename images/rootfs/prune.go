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

// Prune removes cache entries (debootstrapped trees, package layers,
// downloaded tarballs and the deb cache's packages) not built, downloaded
// or used within the last keep, and returns the paths it removed. Each
// entry is removed under its lock; one a build holds is in use and stays.
func (b *Builder) Prune(ctx context.Context, keep time.Duration) ([]string, error) {
	if b.CacheDir == "" {
		return nil, nil // no cache (never the working directory's folders)
	}
	var removed []string
	for _, kind := range []string{"debootstrap", "layers", "tarballs"} {
		c := cache{dir: filepath.Join(b.CacheDir, kind)}
		entries, err := os.ReadDir(c.dir)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("prune %s: %w", c.dir, err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return removed, err
			}
			key := e.Name()
			if strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".lock") {
				continue // temp dirs go with their key's next build
			}
			gone, err := b.pruneEntry(c, kind, key, keep)
			if err != nil {
				return removed, err
			}
			if gone {
				removed = append(removed, filepath.Join(c.dir, key))
			}
		}
	}
	gone, err := b.pruneDebs(keep)
	return append(removed, gone...), err
}

// pruneDebs removes the deb cache's packages no build has used within keep
// (a build touches each package it lists), under the deb cache's lock.
func (b *Builder) pruneDebs(keep time.Duration) ([]string, error) {
	dir := filepath.Join(b.CacheDir, debsDir)
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil, nil
	}
	unlock, ok, err := cache{dir: b.CacheDir}.tryLock(debsDir)
	if err != nil || !ok {
		return nil, err // a debootstrap fills it now
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

func (b *Builder) pruneEntry(c cache, kind, key string, keep time.Duration) (bool, error) {
	unlock, ok, err := c.tryLock(key)
	if err != nil || !ok {
		return false, err // a build holds it: in use
	}
	defer unlock()
	var last time.Time
	if kind == "tarballs" {
		info, err := os.Stat(filepath.Join(c.dir, key))
		if err != nil {
			return false, nil // removed meanwhile
		}
		last = info.ModTime()
	} else if last, ok = c.lastUsed(key); !ok {
		return false, nil // not an entry (a build's leftovers go with its key's next build)
	}
	if time.Since(last) <= keep {
		return false, nil
	}
	if err := mounts.RemoveTree(filepath.Join(c.dir, key)); err != nil {
		return false, fmt.Errorf("prune: %w", err)
	}
	// The (empty) lock file stays: removing it while another process
	// waits on it would let two builds of one key run at once.
	return true, nil
}
