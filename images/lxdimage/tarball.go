package lxdimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tarEntry is one file written by a reproducible tar writer: either a
// generated file (body) or one taken from a directory tree (src).
type tarEntry struct {
	name string // path inside the archive, no leading slash; directories end in /
	mode int64
	body []byte
}

// reproducibleTar writes archives whose bytes depend only on the content:
// entries in lexical order, every mtime set to the epoch, numeric owners
// without names, no atime/ctime, and hard links resolved by first path.
type reproducibleTar struct {
	tw    *tar.Writer
	mtime time.Time
	links map[fileID]string // first archive path of each multiply-linked inode
	// progress counts bytes of file content copied in.
	progress io.Writer
}

type fileID struct{ dev, ino uint64 }

func newReproducibleTar(w io.Writer, epoch int64, progress io.Writer) *reproducibleTar {
	if progress == nil {
		progress = io.Discard
	}
	return &reproducibleTar{tw: tar.NewWriter(w), mtime: time.Unix(epoch, 0).UTC(),
		links: map[fileID]string{}, progress: progress}
}

func (r *reproducibleTar) header(h *tar.Header) *tar.Header {
	h.ModTime = r.mtime
	h.Format = tar.FormatPAX
	h.Uname, h.Gname = "", ""
	return h
}

// writeGenerated adds files ssbuild made (metadata, templates), owned by root.
func (r *reproducibleTar) writeGenerated(entries []tarEntry) error {
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		if strings.HasSuffix(e.name, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := r.tw.WriteHeader(r.header(h)); err != nil {
			return fmt.Errorf("tar %s: %w", e.name, err)
		}
		if _, err := r.tw.Write(e.body); err != nil {
			return fmt.Errorf("tar %s: %w", e.name, err)
		}
	}
	return nil
}

// writeTree adds the tree at dir under prefix (e.g. "rootfs"), keeping
// modes, numeric owners, xattrs, symlinks, hard links and device nodes.
// Sockets are skipped: tar cannot hold them and nothing needs them in an
// image.
func (r *reproducibleTar) writeTree(ctx context.Context, dir, prefix string) error {
	// WalkDir visits entries in lexical order, so the archive order does
	// not depend on the order the directory happens to list them.
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := path.Join(prefix, filepath.ToSlash(rel))
		return r.writeFile(p, name, rel == ".")
	})
}

func (r *reproducibleTar) writeFile(p, name string, isRoot bool) error {
	info, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat_t", p)
	}
	h := &tar.Header{Name: name, Mode: int64(info.Mode().Perm()), Uid: int(st.Uid), Gid: int(st.Gid)}
	// setuid, setgid and sticky bits in tar's own encoding.
	h.Mode |= int64(st.Mode & (unix.S_ISUID | unix.S_ISGID | unix.S_ISVTX))
	switch m := info.Mode(); {
	case m.IsDir():
		h.Typeflag, h.Name = tar.TypeDir, name+"/"
		if isRoot {
			h.Mode, h.Uid, h.Gid = rootDirMode, 0, 0
		}
	case m.IsRegular():
		id := fileID{uint64(st.Dev), st.Ino}
		if first, seen := r.links[id]; seen && st.Nlink > 1 {
			h.Typeflag, h.Linkname = tar.TypeLink, first
			break
		}
		if st.Nlink > 1 {
			r.links[id] = name
		}
		h.Typeflag, h.Size = tar.TypeReg, info.Size()
	case m&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, target
	case m&fs.ModeCharDevice != 0:
		h.Typeflag = tar.TypeChar
		h.Devmajor, h.Devminor = int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev)))
	case m&fs.ModeDevice != 0:
		h.Typeflag = tar.TypeBlock
		h.Devmajor, h.Devminor = int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev)))
	case m&fs.ModeNamedPipe != 0:
		h.Typeflag = tar.TypeFifo
	default: // socket
		return nil
	}
	if h.Typeflag != tar.TypeLink {
		xattrs, err := readXattrs(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for k, v := range xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	if err := r.tw.WriteHeader(r.header(h)); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if h.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(r.tw, io.TeeReader(f, r.progress))
	if err == nil && n != h.Size {
		err = fmt.Errorf("size changed while archiving (%d, now %d bytes)", h.Size, n)
	}
	if err != nil {
		return fmt.Errorf("tar %s: %w", p, err)
	}
	return nil
}

func (r *reproducibleTar) Close() error { return r.tw.Close() }

// readXattrs returns the extended attributes of p (not following symlinks).
// Go's tar writer sorts PAX records, so map order does not leak into the
// archive.
func readXattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsize, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		val := make([]byte, vsize)
		vsize, err = unix.Lgetxattr(p, name, val)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		out[name] = string(val[:vsize])
	}
	return out, nil
}
