package installer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/sovereign-stack/ssbuild/images/squashfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// buildPayload stages the payload files under work/payload (hard links
// where the file system allows, copies otherwise), writes the manifest and
// packs the tree with mksquashfs into out from offset on (the bytes before
// it are left zero: out is truncated).
func (s Spec) buildPayload(ctx context.Context, work, out string, offset int64) error {
	stage := filepath.Join(work, "payload")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return err
	}
	task := s.Progress.Start("payload files", 0, "bytes")
	var sums []string
	err := func() error {
		for _, f := range s.Payload {
			if err := stageTree(ctx, f.Path, filepath.Join(stage, f.Name), f.Name, task, &sums); err != nil {
				return fmt.Errorf("%s: %w", f.Name, err)
			}
		}
		return nil
	}()
	task.Done(err)
	if err != nil {
		return err
	}
	// By path (after "<64 hex>  "), as sha256sum lists a sorted tree.
	sort.Slice(sums, func(i, j int) bool { return sums[i][66:] < sums[j][66:] })
	manifest := []byte(strings.Join(sums, ""))
	if err := os.WriteFile(filepath.Join(stage, PayloadManifest), manifest, 0o644); err != nil {
		return err
	}
	if s.SignManifest != nil {
		sig, err := s.SignManifest(manifest)
		if err != nil {
			return fmt.Errorf("sign %s: %w", PayloadManifest, err)
		}
		if err := os.WriteFile(filepath.Join(stage, s.ManifestSigName), sig, 0o644); err != nil {
			return err
		}
	}
	return writeSquashfs(ctx, s.Progress, stage, out, offset, s.Compression, s.Epoch)
}

// stageTree puts src at dest and adds a manifest line ("<sha256>  <name>")
// for every regular file. Symlinks are kept as they are; other special
// files are refused, the installer has no use for them.
func stageTree(ctx context.Context, src, dest, name string, task *progress.Task, sums *[]string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target, relName := filepath.Join(dest, rel), filepath.ToSlash(filepath.Join(name, rel))
		if strings.ContainsAny(relName, "\n\\") { // sha256sum would escape the line
			return fmt.Errorf("%q: newline or backslash in a payload file name", relName)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			return os.Mkdir(target, info.Mode().Perm())
		case info.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case !info.Mode().IsRegular():
			return fmt.Errorf("%s (%s): not a regular file, directory or symlink", relName, p)
		}
		sum, err := linkOrCopy(ctx, p, target, task)
		if err != nil {
			return err
		}
		*sums = append(*sums, sum+"  "+relName+"\n")
		return nil
	})
}

// linkOrCopy hard-links src to dest (copies across file systems) and
// returns the content's sha256.
func linkOrCopy(ctx context.Context, src, dest string, task *progress.Task) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	h := sha256.New()
	var w io.Writer = h
	var out *os.File
	if err := os.Link(src, dest); err != nil {
		if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) {
			return "", err
		}
		if out, err = os.OpenFile(dest, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err != nil {
			return "", err
		}
		defer out.Close()
		w = io.MultiWriter(h, out)
	}
	if _, err := io.Copy(io.MultiWriter(w, task), ctxReader{ctx, in}); err != nil {
		return "", err
	}
	if out != nil {
		info, err := in.Stat()
		if err != nil {
			return "", err
		}
		if err := out.Chmod(info.Mode().Perm()); err != nil {
			return "", err
		}
		if err := out.Close(); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeSquashfs packs dir reproducibly: every file owned by root, every
// time the epoch, no xattrs (the payload's files are data for the
// installer; the owners inside images are kept by those images).
// With -offset the file system's bytes are those of a stand-alone image:
// squashfs addresses are relative to its start.
func writeSquashfs(ctx context.Context, rep *progress.Reporter, dir, out string, offset int64, comp string, epoch int64) error {
	e := strconv.FormatInt(epoch, 10)
	args := []string{dir, out, "-noappend", "-offset", strconv.FormatInt(offset, 10), "-b", "1M", "-no-exports",
		"-no-xattrs", "-all-root", "-reproducible", "-mkfs-time", e, "-all-time", e}
	if comp == "" {
		// zstd's default level (15) packs an incompressible 512 MiB file
		// in 9 s here, level 3 in 1.1 s; payloads are mostly compressed
		// images already.
		args = append(args, "-comp", "zstd", "-Xcompression-level", "3")
	} else {
		args = append(args, "-comp", comp)
	}
	return squashfs.Make(ctx, rep, "payload squashfs", args)
}
