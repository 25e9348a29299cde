package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// Archive is a set of entries for a cpio "newc" archive, the format the
// kernel unpacks into its initial root filesystem. Entries are keyed by
// their path, so adding a path twice replaces it. Written archives are
// reproducible: entries sorted by path (parents before children), every
// mtime the archive's epoch, owner 0:0, inode numbers 1, 2, ... in that
// order, no device numbers except for device nodes.
type Archive struct {
	// Epoch is every entry's modification time (seconds since 1970).
	Epoch   int64
	entries map[string]entry
}

type entry struct {
	mode   uint32 // type and permission bits, as in stat(2)
	data   []byte // contents for files from memory and symlink targets
	source string // file whose contents the entry has, when not data
	size   int64
	rdev   [2]uint32 // major, minor of a device node
}

// The type bits of newc's mode field (same as stat(2)).
const (
	typeDir     = 0o040000
	typeFile    = 0o100000
	typeSymlink = 0o120000
	typeCharDev = 0o020000
)

// unixPerm turns Go's permission and special bits into stat(2)'s.
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// NewArchive returns an empty archive with the given epoch.
func NewArchive(epoch int64) *Archive {
	return &Archive{Epoch: epoch, entries: map[string]entry{}}
}

// clean turns "/a/b/" into "a/b", the form the kernel's unpacker expects.
func clean(name string) (string, error) {
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if p == "" {
		return "", fmt.Errorf("cpio: %q is the archive root", name)
	}
	return p, nil
}

func (a *Archive) add(name string, e entry) error {
	p, err := clean(name)
	if err != nil {
		return err
	}
	// The kernel drops an entry whose parent directory does not exist, so
	// every parent gets an entry.
	for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
		if old, ok := a.entries[dir]; ok {
			if old.mode&0o170000 != typeDir {
				return fmt.Errorf("cpio: %s: parent %s is not a directory", p, dir)
			}
			continue
		}
		a.entries[dir] = entry{mode: typeDir | 0o755}
	}
	a.entries[p] = e
	return nil
}

// AddDir adds a directory.
func (a *Archive) AddDir(name string, perm fs.FileMode) error {
	return a.add(name, entry{mode: typeDir | unixPerm(perm)})
}

// AddData adds a regular file holding data.
func (a *Archive) AddData(name string, data []byte, perm fs.FileMode) error {
	return a.add(name, entry{mode: typeFile | unixPerm(perm), data: data, size: int64(len(data))})
}

// AddFile adds a regular file with the contents of the file at source, read
// when the archive is written.
func (a *Archive) AddFile(name, source string, perm fs.FileMode) error {
	info, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("cpio: %s is not a regular file", source)
	}
	return a.add(name, entry{mode: typeFile | unixPerm(perm), source: source, size: info.Size()})
}

// AddSymlink adds a symbolic link to target.
func (a *Archive) AddSymlink(name, target string) error {
	return a.add(name, entry{mode: typeSymlink | 0o777, data: []byte(target), size: int64(len(target))})
}

// AddCharDev adds a character device node, e.g. /dev/console (5, 1), which
// the kernel opens for init's standard streams before init runs.
func (a *Archive) AddCharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return a.add(name, entry{mode: typeCharDev | unixPerm(perm), rdev: [2]uint32{major, minor}})
}

// Names lists the archive's paths in the order they are written.
func (a *Archive) Names() []string {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	// Byte order puts a directory before everything under it, since its
	// path is a prefix of theirs.
	sort.Strings(names)
	return names
}

// WriteTo writes the uncompressed newc archive, trailer included.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: bufio.NewWriterSize(w, 1<<20)}
	for i, name := range a.Names() {
		if err := a.writeEntry(cw, uint32(i+1), name, a.entries[name]); err != nil {
			return cw.n, fmt.Errorf("cpio: %s: %w", name, err)
		}
	}
	// The trailer: nlink 1 and the name, as GNU cpio writes it.
	if err := writeHeader(cw, "TRAILER!!!", 0, 0, 1, 0, 0, [2]uint32{}); err != nil {
		return cw.n, err
	}
	if err := pad(cw); err != nil {
		return cw.n, err
	}
	return cw.n, cw.w.(*bufio.Writer).Flush()
}

func (a *Archive) writeEntry(w *countingWriter, ino uint32, name string, e entry) error {
	nlink := uint32(1)
	if e.mode&0o170000 == typeDir {
		nlink = 2
	}
	if err := writeHeader(w, name, ino, e.mode, nlink, a.Epoch, e.size, e.rdev); err != nil {
		return err
	}
	if e.source == "" {
		if _, err := w.Write(e.data); err != nil {
			return err
		}
		return pad(w)
	}
	f, err := os.Open(e.source)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return err
	}
	if n != e.size { // the header already promised e.size bytes
		return fmt.Errorf("%s changed size while archived (%d, then %d bytes)", e.source, e.size, n)
	}
	return pad(w)
}

// writeHeader writes a newc header and the NUL-terminated name, padded to
// four bytes.
func writeHeader(w *countingWriter, name string, ino, mode, nlink uint32, mtime, size int64, rdev [2]uint32) error {
	if size > 0xffffffff {
		return fmt.Errorf("%d bytes: newc holds files below 4 GiB", size)
	}
	_, err := fmt.Fprintf(w, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		ino, mode, 0, 0, nlink, uint32(mtime), uint32(size),
		0, 0, rdev[0], rdev[1], len(name)+1, 0, name)
	if err != nil {
		return err
	}
	return pad(w)
}

var zeros [4]byte

func pad(w *countingWriter) error {
	_, err := w.Write(zeros[:(4-w.n%4)%4])
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
