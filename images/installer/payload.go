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
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/squashfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// stagePayload stages the payload files under work/payload (hard links
// where the file system allows, copies otherwise) and writes the manifest
// (and its signature); it returns the staged tree, for writeSquashfs.
// Files whose digest the caller gave (PayloadFile.SHA256) are linked
// without being read.
func (s Spec) stagePayload(ctx context.Context, work string) (stage string, err error) {
	stage = filepath.Join(work, "payload")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return "", err
	}
	task := s.Progress.Start("payload files", 0, "bytes")
	var sums []string
	var files []stagedFile
	err = func() error {
		for _, f := range s.Payload {
			n := len(files)
			if err := stageTree(ctx, f.Path, filepath.Join(stage, f.Name), f.Name, &files); err != nil {
				return fmt.Errorf("%s: %w", f.Name, err)
			}
			if f.SHA256 != "" {
				if len(files) != n+1 || files[n].src != f.Path {
					return fmt.Errorf("%s: a digest is given, but it is not a regular file", f.Name)
				}
				files[n].known = f.SHA256
			}
		}
		var err error
		sums, err = linkAndHash(ctx, files, task)
		return err
	}()
	task.Done(err)
	if err != nil {
		return "", err
	}
	// By path (after "<64 hex>  "), as sha256sum lists a sorted tree.
	sort.Slice(sums, func(i, j int) bool { return sums[i][66:] < sums[j][66:] })
	manifest := []byte(strings.Join(sums, ""))
	if err := os.WriteFile(filepath.Join(stage, stick.Manifest), manifest, 0o644); err != nil {
		return "", err
	}
	if s.SignManifest != nil {
		sig, err := s.SignManifest(manifest)
		if err != nil {
			return "", fmt.Errorf("sign %s: %w", stick.Manifest, err)
		}
		if err := os.WriteFile(filepath.Join(stage, s.ManifestSigName), sig, 0o644); err != nil {
			return "", err
		}
	}
	return stage, nil
}

// stagedFile is a regular file of the payload, to be linked (or copied)
// into the staging tree and hashed for the manifest.
type stagedFile struct {
	src, dest, name string
	known           string // the digest the caller gave, if any
}

// stageTree makes src's directories and symlinks under dest and lists its
// regular files in files. Other special files are refused, the installer
// has no use for them.
func stageTree(ctx context.Context, src, dest, name string, files *[]stagedFile) error {
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
		*files = append(*files, stagedFile{src: p, dest: target, name: relName})
		return nil
	})
}

// linkAndHash stages files, hashing several at once (a payload holds a few
// large images), and returns their manifest lines ("<sha256>  <name>").
func linkAndHash(ctx context.Context, files []stagedFile, task *progress.Task) ([]string, error) {
	sums := make([]string, len(files))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for i := range files {
		f := &files[i]
		g.Go(func() error {
			sum, err := linkOrCopy(gctx, f.src, f.dest, f.known != "", task)
			if err != nil {
				return fmt.Errorf("%s: %w", f.name, err)
			}
			switch {
			case sum == "": // linked, not read
				sum = f.known
			case f.known != "" && sum != f.known: // copied: read anyway
				return fmt.Errorf("%s: sha256 is %s, but %s was given for it", f.name, sum, f.known)
			}
			sums[i] = sum + "  " + f.name + "\n"
			return nil
		})
	}
	return sums, g.Wait()
}

// linkOrCopy hard-links src to dest (copies across file systems) and
// returns the content's sha256; with skipHash, a link is not read and its
// digest is "".
func linkOrCopy(ctx context.Context, src, dest string, skipHash bool, task *progress.Task) (string, error) {
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
	} else if skipHash {
		return "", nil
	}
	if err := pipelinedCopy(io.MultiWriter(w, task), ctxReader{ctx, in}); err != nil {
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

// writeSquashfs packs dir into out from offset on (the bytes before it are
// left zero: out is truncated), reproducibly: every file owned by root, every
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
