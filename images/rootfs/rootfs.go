// Package rootfs makes the root filesystem an image starts from: debootstrapped
// from a distribution archive (cached by its inputs, so later stages can change
// without re-running debootstrap) or unpacked from a tarball verified against
// its sha256. The result is a plain directory that images/chroot customises.
package rootfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Debootstrap describes a root filesystem built by debootstrap.
type Debootstrap struct {
	Suite      string   // jammy, bookworm, ...
	Mirror     string   // e.g. http://archive.ubuntu.com/ubuntu
	Keyring    string   // keyring file that signs the mirror; empty: debootstrap's default
	Variant    string   // minbase, buildd, ...; empty: debootstrap's default
	Components []string // archive components; empty: debootstrap's default (main)
	Include    []string // extra packages debootstrap installs
	Arch       string   // empty: the build machine's (dpkg --print-architecture)
}

// Tarball is a root filesystem shipped as a tar archive (plain, gzip, xz,
// zstd or bzip2), trusted only when its sha256 matches. Give Path or URL.
type Tarball struct {
	Path   string // a local file
	URL    string // http(s); downloaded once into the cache, named by its digest
	SHA256 string // hex digest of the file as stored
}

// source names the tarball in messages.
func (tb Tarball) source() string {
	if tb.URL != "" {
		return tb.URL
	}
	return tb.Path
}

// Builder makes root filesystems. The zero value works for tarballs;
// debootstrap needs CacheDir.
type Builder struct {
	// CacheDir keeps debootstrapped trees between builds (directories named
	// by a key of their inputs) and downloaded tarballs (named by digest).
	CacheDir string
	// MaxAge makes debootstrap run again for entries older than this, so
	// security updates from the mirror get in. Zero: entries never expire.
	// An expired entry is replaced only once the new build succeeded.
	MaxAge time.Duration
	// Progress receives the long steps (debootstrap, copy, verify, unpack).
	// Nil means no progress.
	Progress *progress.Reporter
}

// Result is a root filesystem ready for customisation.
type Result struct {
	Dir      string // the root filesystem, owned by the caller
	CacheHit bool   // debootstrap was skipped: the tree came from the cache
	CacheKey string // the cache entry's key (debootstrap only)
	// Provenance, for the build manifest.
	Inputs  *Inputs   // debootstrap: what the tree was built from
	BuiltAt time.Time // debootstrap: when it ran (before now on a cache hit)
	SHA256  string    // tarball: the verified digest
}

func (b *Builder) progress() *progress.Reporter {
	if b.Progress == nil {
		return progress.Discard()
	}
	return b.Progress
}

// prepareDest checks that dest can receive a tree: it must not exist, or be
// an empty directory (which is removed so a finished tree can be renamed in).
func prepareDest(dest string) error {
	if dest == "" {
		return errors.New("no destination directory given")
	}
	entries, err := os.ReadDir(dest)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("destination %s: %w", dest, err)
	case len(entries) > 0:
		return fmt.Errorf("destination %s is not empty", dest)
	default:
		if err := os.Remove(dest); err != nil {
			return fmt.Errorf("destination %s: %w", dest, err)
		}
	}
	return os.MkdirAll(filepath.Dir(dest), 0o755)
}
