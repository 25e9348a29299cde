// Package outcache keeps built artifacts (squashfs, tarballs, disks, the
// chainstate artifact, manifests) between builds, each under a key of all
// its inputs, so a rebuild whose inputs did not change copies them instead
// of building them again.
//
// Layout of the cache folder (ssbuild's is <--cache>/artifacts):
//
//	<key>/entry.json      kind, the inputs the key was made of, and every
//	                      file's sha256 and size; its mtime is the last use
//	<key>/files/<name>    the artifact's files
//	.tmp-<key>-*          an entry being stored (or left by a crash)
//	stat-digests.json     content digests of input files, by path, valid
//	                      while the file's inode, size, mtime and ctime are
//	                      unchanged
//
// An entry is complete exactly when <key> exists: it is renamed
// into place as the last step of Store. A reuse copies each file while
// hashing it and compares the digest with the one recorded at Store, so a
// corrupted entry is found, removed and reported (the caller rebuilds), and
// never shipped.
package outcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/version"
)

// format changes when the entry layout or the key's make-up changes.
const format = 1

// State says where an artifact of a build came from.
type State string

const (
	Built   State = "built"   // no entry: built and stored
	Reused  State = "reused"  // copied from a verified entry
	Rebuilt State = "rebuilt" // the entry did not verify: removed, built again
)

// Cache is the artifact cache in Dir (the build's cache folder).
type Cache struct {
	Dir string
}

func (c Cache) root() string               { return c.Dir }
func (c Cache) entryDir(key string) string { return filepath.Join(c.root(), key) }

// Entry is entry.json.
type Entry struct {
	Kind    string          `json:"kind"`
	Key     string          `json:"key"`
	Inputs  json.RawMessage `json:"inputs"`
	Files   []File          `json:"files"`
	Meta    json.RawMessage `json:"meta,omitempty"`
	Created time.Time       `json:"created"`
}

// File is one file of an entry.
type File struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Key returns the key of an artifact of kind made from inputs (any
// JSON-encodable value: digests, recipe fields, tool versions). The format
// version and the running ssbuild's identity are always part of it, so a
// new ssbuild never reuses what an older one built.
func Key(kind string, inputs any) (string, error) {
	self, err := selfID()
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(struct {
		Format  int    `json:"format"`
		SSBuild string `json:"ssbuild"`
		Kind    string `json:"kind"`
		Inputs  any    `json:"inputs"`
	}{format, self, kind, inputs})
	if err != nil {
		return "", fmt.Errorf("cache key of %s: %w", kind, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// selfID is the version and the digest of the running executable: a dev
// build's version says nothing about its code.
var selfID = sync.OnceValues(func() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cache key: find the running ssbuild: %w", err)
	}
	sum, err := hashFile(exe)
	if err != nil {
		return "", fmt.Errorf("cache key: %w", err)
	}
	return version.Version + " " + sum, nil
})

// Restore copies the files of key's entry into destDir (which must exist),
// verifying each against its recorded digest, and decodes the entry's meta
// into meta (when not nil). It returns the entry and true when every file
// verified. A missing entry gives false and no error. An entry that does
// not verify is removed and reported as corrupt: false and a
// *CorruptError; whatever was copied is removed from destDir.
func (c Cache) Restore(key, destDir string, meta any) (Entry, bool, error) {
	if c.Dir == "" {
		return Entry{}, false, nil
	}
	dir := c.entryDir(key)
	data, err := os.ReadFile(filepath.Join(dir, "entry.json"))
	if errors.Is(err, os.ErrNotExist) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("artifact cache: %w", err)
	}
	var ent Entry
	bad := func(why string) (Entry, bool, error) {
		for _, f := range ent.Files {
			os.Remove(filepath.Join(destDir, f.Name))
		}
		rmErr := c.remove(key)
		return Entry{}, false, errors.Join(&CorruptError{Key: key, Why: why}, rmErr)
	}
	if err := json.Unmarshal(data, &ent); err != nil || ent.Key != key || len(ent.Files) == 0 {
		return bad("entry.json unreadable or not this key's")
	}
	if meta != nil && len(ent.Meta) > 0 {
		if err := json.Unmarshal(ent.Meta, meta); err != nil {
			return bad("meta: " + err.Error())
		}
	}
	for _, f := range ent.Files {
		if !plainName(f.Name) {
			return bad(fmt.Sprintf("file name %q", f.Name))
		}
		sum, size, err := copyFile(filepath.Join(dir, "files", f.Name), filepath.Join(destDir, f.Name), true)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return Entry{}, false, fmt.Errorf("artifact cache: restore %s: %w", f.Name, err)
		}
		if err != nil || sum != f.SHA256 || size != f.Size {
			got := "missing"
			if err == nil {
				got = fmt.Sprintf("sha256 %s, %d bytes", sum, size)
			}
			return bad(fmt.Sprintf("%s: recorded sha256 %s, %d bytes; found %s", f.Name, f.SHA256, f.Size, got))
		}
	}
	now := time.Now()
	_ = os.Chtimes(filepath.Join(dir, "entry.json"), now, now) // last use, for Prune
	return ent, true, nil
}

// CorruptError is an entry that did not verify (and was removed).
type CorruptError struct{ Key, Why string }

func (e *CorruptError) Error() string {
	return fmt.Sprintf("cache entry %s is corrupt (%s)", e.Key[:12], e.Why)
}

// Store copies the files at paths (named by their base names) into key's
// entry, with inputs (what the key was made of, for people reading the
// cache) and meta (returned by Restore). It returns each file's digest,
// computed while copying. An existing entry of key is replaced.
func (c Cache) Store(kind, key string, inputs, meta any, paths ...string) ([]File, error) {
	fail := func(err error) ([]File, error) { return nil, fmt.Errorf("artifact cache: store %s: %w", kind, err) }
	if c.Dir == "" {
		var files []File
		for _, p := range paths {
			sum, err := hashFile(p)
			if err != nil {
				return fail(err)
			}
			info, err := os.Stat(p)
			if err != nil {
				return fail(err)
			}
			files = append(files, File{Name: filepath.Base(p), SHA256: sum, Size: info.Size()})
		}
		return files, nil
	}
	if err := os.MkdirAll(c.root(), 0o755); err != nil {
		return fail(err)
	}
	tmp, err := os.MkdirTemp(c.root(), ".tmp-"+key+"-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := os.Mkdir(filepath.Join(tmp, "files"), 0o755); err != nil {
		return fail(err)
	}
	ent := Entry{Kind: kind, Key: key, Created: time.Now().UTC()}
	if ent.Inputs, err = json.Marshal(inputs); err != nil {
		return fail(err)
	}
	if meta != nil {
		if ent.Meta, err = json.Marshal(meta); err != nil {
			return fail(err)
		}
	}
	for _, p := range paths {
		name := filepath.Base(p)
		// Not synced: a cache file cut short by a crash fails verification.
		sum, size, err := copyFile(p, filepath.Join(tmp, "files", name), false)
		if err != nil {
			return fail(err)
		}
		ent.Files = append(ent.Files, File{Name: name, SHA256: sum, Size: size})
	}
	data, err := json.MarshalIndent(ent, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "entry.json"), append(data, '\n'), 0o644); err != nil {
		return fail(err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp made it 0700
		return fail(err)
	}
	if err := c.remove(key); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, c.entryDir(key)); err != nil {
		// Another build stored the same key meanwhile: same inputs, keep it.
		if _, statErr := os.Stat(filepath.Join(c.entryDir(key), "entry.json")); statErr == nil {
			return ent.Files, nil
		}
		return fail(err)
	}
	return ent.Files, nil
}

// remove takes an entry out of use first (a rename), then deletes it.
func (c Cache) remove(key string) error {
	dir := c.entryDir(key)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	aside := filepath.Join(c.root(), fmt.Sprintf(".old-%s-%d", key, time.Now().UnixNano()))
	if err := os.Rename(dir, aside); err != nil {
		return fmt.Errorf("artifact cache: remove entry %s: %w", key[:12], err)
	}
	return os.RemoveAll(aside)
}

// Prune keeps, per kind, the keep entries last used (stored or restored)
// and removes the others, and leftovers of interrupted stores older than an
// hour. It returns the keys it removed. A new ssbuild or a changed input
// makes new keys; this bounds what the old ones occupy.
func (c Cache) Prune(keep int) ([]string, error) {
	if c.Dir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(c.root())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("artifact cache: prune: %w", err)
	}
	type used struct {
		key  string
		last time.Time
	}
	byKind := map[string][]used{}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") || strings.HasPrefix(name, ".old-") {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
				os.RemoveAll(filepath.Join(c.root(), name))
			}
			continue
		}
		if !e.IsDir() {
			continue
		}
		path := filepath.Join(c.root(), name, "entry.json")
		info, err := os.Stat(path)
		if err != nil {
			continue
		}
		var ent Entry
		if data, err := os.ReadFile(path); err != nil || json.Unmarshal(data, &ent) != nil {
			continue
		}
		byKind[ent.Kind] = append(byKind[ent.Kind], used{name, info.ModTime()})
	}
	var removed []string
	for _, list := range byKind {
		slices.SortFunc(list, func(a, b used) int { return b.last.Compare(a.last) })
		for _, u := range list[min(keep, len(list)):] {
			if err := c.remove(u.key); err != nil {
				return removed, err
			}
			removed = append(removed, u.key)
		}
	}
	return removed, nil
}

func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// copyFile copies src to dst (created, 0644, synced when asked) and
// returns the digest and size of what it copied: one read serves both. A
// sparse src gives a sparse dst (its zero blocks left as holes), a dense
// one a dense dst: tools that read the file can tell (mksquashfs packs a
// sparse file differently), so a restored artifact must be what was built.
func copyFile(src, dst string, sync bool) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return "", 0, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	var w io.Writer = out
	if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Blocks*512 < info.Size() {
		w = &holeWriter{f: out}
	}
	n, err := io.CopyBuffer(io.MultiWriter(w, h), in, make([]byte, 1<<20))
	if err == nil {
		err = out.Truncate(n) // a hole at the end has no write to make the size
	}
	if err == nil && sync {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return "", 0, fmt.Errorf("copy %s: %w", filepath.Base(src), err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// holeWriter writes to f, leaving out 4 KiB blocks of zeros (holes).
type holeWriter struct {
	f   *os.File
	off int64
}

func (w *holeWriter) Write(p []byte) (int, error) {
	const block = 4096
	var zero [block]byte
	for i := 0; i < len(p); i += block {
		b := p[i:min(i+block, len(p))]
		if !bytes.Equal(b, zero[:len(b)]) {
			if _, err := w.f.WriteAt(b, w.off); err != nil {
				return i, err
			}
		}
		w.off += int64(len(b))
	}
	return len(p), nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
