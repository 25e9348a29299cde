package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
)

// cache holds debootstrapped trees:
//
//	DIR/<key>/rootfs/       the tree
//	DIR/<key>/entry.json    its inputs, size, build time
//	DIR/<key>.lock          flock held while an entry is built or read
//	DIR/.tmp-<key>-*        an entry being built (or left by a crash)
//
// An entry is complete exactly when DIR/<key> exists: it is renamed into
// place as the last step of a successful build.
type cache struct{ dir string }

// entry is what entry.json records.
type entry struct {
	Inputs       Inputs    `json:"inputs"`
	Created      time.Time `json:"created"`
	SizeBytes    int64     `json:"size_bytes"`
	BuildSeconds float64   `json:"build_seconds"`
}

func (c cache) entryDir(key string) string { return filepath.Join(c.dir, key) }
func (c cache) rootfs(key string) string   { return filepath.Join(c.dir, key, "rootfs") }

// lock takes the key's lock, waiting for another build of the same key (in
// this or another process, e.g. parallel test binaries) to finish. The
// kernel drops the lock when a holder dies, so a crash never blocks.
func (c cache) lock(ctx context.Context, key string) (unlock func(), err error) {
	for {
		unlock, ok, err := c.tryLock(key)
		if err != nil || ok {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rootfs cache: waiting for lock %s: %w", filepath.Join(c.dir, key+".lock"), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tryLock takes the key's lock if no one holds it (ok false: in use).
func (c cache) tryLock(key string) (unlock func(), ok bool, err error) {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("rootfs cache: %w", err)
	}
	path := filepath.Join(c.dir, key+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("rootfs cache: %w", err)
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	switch {
	case err == nil:
		return func() { f.Close() }, true, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		f.Close()
		return nil, false, nil
	}
	f.Close()
	return nil, false, fmt.Errorf("rootfs cache: lock %s: %w", path, err)
}

// used marks the entry as used now (entry.json's time), which Prune goes
// by: an entry built long ago but used by every build stays.
func (c cache) used(key string) {
	now := time.Now()
	os.Chtimes(filepath.Join(c.entryDir(key), "entry.json"), now, now) // at worst pruned early: rebuilt then
}

// lastUsed is when the entry was built or last used.
func (c cache) lastUsed(key string) (time.Time, bool) {
	info, err := os.Stat(filepath.Join(c.entryDir(key), "entry.json"))
	if err != nil {
		return time.Time{}, false
	}
	return info.ModTime(), true
}

// lookup returns the complete entry for key, if there is one. Call with the
// key's lock held.
func (c cache) lookup(key string) (entry, bool, error) {
	data, err := os.ReadFile(filepath.Join(c.entryDir(key), "entry.json"))
	if errors.Is(err, os.ErrNotExist) {
		return entry{}, false, nil
	}
	if err != nil {
		return entry{}, false, fmt.Errorf("rootfs cache: %w", err)
	}
	var ent entry
	if err := json.Unmarshal(data, &ent); err != nil {
		return entry{}, false, fmt.Errorf("rootfs cache: entry %s: %w", key, err)
	}
	return ent, true, nil
}

// newTemp removes temp dirs a crashed build of key left behind (safe: we
// hold the key's lock, so no live build owns them) and makes a fresh one.
func (c cache) newTemp(key string) (string, error) {
	stale, err := filepath.Glob(filepath.Join(c.dir, ".tmp-"+key+"-*"))
	if err != nil {
		return "", err
	}
	for _, dir := range stale {
		if err := mounts.RemoveTree(dir); err != nil {
			return "", fmt.Errorf("remove stale build %s: %w", dir, err)
		}
	}
	return os.MkdirTemp(c.dir, ".tmp-"+key+"-")
}

// commit writes entry.json into tmp and renames tmp to the entry's name. An
// older entry there (expired, or a directory without entry.json, which
// commit never makes) is moved aside first and removed after.
func (c cache) commit(key, tmp string, ent entry) error {
	data, err := json.MarshalIndent(ent, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "entry.json"), data, 0o644); err != nil {
		return fmt.Errorf("rootfs cache: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp made it 0700
		return fmt.Errorf("rootfs cache: %w", err)
	}
	final := c.entryDir(key)
	old := ""
	if _, err := os.Lstat(final); err == nil {
		old = tmp + "-replaced"
		if err := os.Rename(final, old); err != nil {
			return fmt.Errorf("rootfs cache: %w", err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("rootfs cache: %w", err)
	}
	if old != "" {
		return mounts.RemoveTree(old)
	}
	return nil
}
