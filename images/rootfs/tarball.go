package rootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/internal/command"
)

// ErrDigestMismatch is returned (wrapped) when a tarball's sha256 is not the
// one given.
var ErrDigestMismatch = errors.New("sha256 mismatch")

// Unpack verifies tb against its sha256 and unpacks it into dest. Nothing is
// unpacked unless the digest matches; a failed unpack leaves no dest. dest
// must not exist or be an empty directory. A URL is downloaded into the
// cache first (once: later builds find it by its digest).
func (b *Builder) Unpack(ctx context.Context, tb Tarball, dest string) (Result, error) {
	want := strings.ToLower(strings.TrimSpace(tb.SHA256))
	if len(want) != sha256.Size*2 || strings.Trim(want, "0123456789abcdef") != "" {
		return Result{}, fmt.Errorf("rootfs tarball %s: sha256 %q is not a hex sha256 digest", tb.source(), tb.SHA256)
	}
	if (tb.Path == "") == (tb.URL == "") {
		return Result{}, fmt.Errorf("rootfs tarball: give a path or a URL, not both or neither (path %q, URL %q)", tb.Path, tb.URL)
	}
	if err := prepareDest(dest); err != nil {
		return Result{}, err
	}
	path := tb.Path
	if tb.URL != "" {
		var err error
		if path, err = b.download(ctx, tb.URL, want); err != nil {
			return Result{}, fmt.Errorf("rootfs tarball %s: %w", tb.URL, err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return Result{}, fmt.Errorf("rootfs tarball: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return Result{}, fmt.Errorf("rootfs tarball: %w", err)
	}

	// Also for a download: the cached file is checked again on every use.
	task := b.progress().Start("verify "+filepath.Base(path), info.Size(), "bytes")
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(h, task), readerCtx{ctx, f})
	if err == nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			err = fmt.Errorf("%w: expected %s, got %s", ErrDigestMismatch, want, got)
		}
	}
	task.Done(err)
	if err != nil {
		return Result{}, fmt.Errorf("rootfs tarball %s: %w", tb.source(), err)
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Result{}, fmt.Errorf("rootfs tarball %s: %w", tb.source(), err)
	}
	if err := b.extract(ctx, f, path, info.Size(), dest); err != nil {
		return Result{}, fmt.Errorf("rootfs tarball %s: %w", tb.source(), err)
	}
	return Result{Dir: dest, SHA256: want}, nil
}

// extract unpacks the (already verified) open file into a temp dir next to
// dest and renames it into place once it looks like a root filesystem.
func (b *Builder) extract(ctx context.Context, f *os.File, name string, size int64, dest string) error {
	var magic [6]byte
	n, _ := io.ReadFull(f, magic[:])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	tmp := dest + ".partial"
	if err := mounts.RemoveTree(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	task := b.progress().Start("unpack "+filepath.Base(name), size, "bytes")
	// The verified descriptor is streamed to tar, so tar reads exactly the
	// bytes that were hashed when nobody rewrites the file in place. tar
	// cannot sniff compression on a pipe; we tell it.
	args := []string{"--extract", "--file=-", "--directory=" + tmp,
		"--numeric-owner", "--same-owner", "--preserve-permissions",
		"--xattrs", "--xattrs-include=*"}
	if flag := compressionFlag(magic[:n]); flag != "" {
		args = append(args, flag)
	}
	_, err := command.Run(ctx, command.Cmd{Name: "tar", Args: args, Stdin: io.TeeReader(f, task)})
	if err == nil && !looksLikeRootfs(tmp) {
		err = errors.New("no etc/os-release or usr/lib/os-release at the top of the archive: not a root filesystem (packed with a leading directory?)")
	}
	if err == nil {
		err = os.Rename(tmp, dest)
	}
	if err != nil {
		mounts.RemoveTree(tmp)
	}
	task.Done(err)
	return err
}

func compressionFlag(magic []byte) string {
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return "--gzip"
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return "--xz"
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "--zstd"
	case bytes.HasPrefix(magic, []byte("BZh")):
		return "--bzip2"
	}
	return ""
}

func looksLikeRootfs(dir string) bool {
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); err == nil {
			return true
		}
	}
	return false
}

// readerCtx stops a long read (hashing a multi-GiB tarball) on cancel.
type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
