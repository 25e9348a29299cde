package chainstate

import (
	"archive/tar"
	"bufio"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

const volumePrefix = "backup/volume/"

// Pack writes the recipe's chainstate as an LXD custom volume backup (see the
// package doc). The recipe's sha256 is checked before anything is written;
// the artifact appears under Output only once it is complete.
func Pack(ctx context.Context, o Options) (*Artifact, error) {
	cs := o.Chainstate
	src := cs.Source
	if src != "" && !filepath.IsAbs(src) {
		src = filepath.Join(o.BaseDir, src)
	}
	a, err := pack(ctx, o, src)
	if err != nil {
		return nil, fmt.Errorf("pack chainstate %s: %w", src, err)
	}
	return a, nil
}

func pack(ctx context.Context, o Options, src string) (*Artifact, error) {
	cs := o.Chainstate
	rep := cmp.Or(o.Progress, progress.Discard())
	if cs.Source == "" || o.Output == "" {
		return nil, errors.New("source and output are required")
	}
	if _, ok := networkMagic[cs.Network]; !ok {
		return nil, fmt.Errorf("unknown network %q", cs.Network)
	}
	want, err := checkRecipeDigest(cs.SHA256)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if st.IsDir() && inside(o.Output, src) {
		return nil, fmt.Errorf("output %s is inside the source directory", o.Output)
	}
	a := &Artifact{Volume: o.volumeName(), Network: cs.Network, Kind: cs.Kind, Source: filepath.Base(src)}
	switch cs.Kind {
	case KindAssumeUTXO:
		if !st.Mode().IsRegular() {
			return nil, errors.New("an AssumeUTXO snapshot must be a file")
		}
		h, err := ReadSnapshotHeader(src)
		if err != nil {
			return nil, err
		}
		if err := h.CheckNetwork(cs.Network); err != nil {
			return nil, err
		}
		a.Snapshot = &h
	case KindPrunedDatadir:
		if !st.IsDir() && !st.Mode().IsRegular() {
			return nil, errors.New("a pruned datadir must be a directory or a tarball")
		}
	default:
		return nil, fmt.Errorf("unknown kind %q (want %s or %s)", cs.Kind, KindPrunedDatadir, KindAssumeUTXO)
	}

	// The recipe's digest is checked before packing, so a wrong source
	// never costs an artifact write, let alone leaves one behind.
	var checked Manifest
	if want != "" {
		var got string
		if st.IsDir() {
			if checked, err = hashDir(ctx, src, rep); err != nil {
				return nil, err
			}
			got = checked.Digest()
		} else {
			task := rep.Start("chainstate: sha256 of "+a.Source, st.Size(), "bytes")
			got, err = hashFile(ctx, src, task)
			task.Done(err)
			if err != nil {
				return nil, err
			}
		}
		if got != want {
			what := "sha256"
			if st.IsDir() {
				what = "manifest sha256"
			}
			return nil, fmt.Errorf("%s is %s, the recipe expects %s", what, got, want)
		}
	}

	task := rep.Start("chainstate: pack "+a.Source, sourceSize(src, st), "bytes")
	err = writeAtomic(o.Output, a, func(w io.Writer) error {
		t := &tarOut{ctx: ctx, tw: tar.NewWriter(w), mtime: o.mtime(), found: Manifest{}, task: task}
		if err := t.writeIndex(o, a); err != nil {
			return err
		}
		if err := t.dir(""); err != nil {
			return err
		}
		switch {
		case st.IsDir():
			err = t.fromDir(src, checked)
		case cs.Kind == KindAssumeUTXO:
			err = t.fromFile(src, want)
		default:
			err = t.fromTarball(src, want)
		}
		if err != nil {
			return err
		}
		manifest := t.found.Bytes()
		sum := sha256.Sum256(manifest)
		a.ManifestSHA256 = hex.EncodeToString(sum[:])
		a.Files, a.Bytes = t.files, t.bytes
		if err := t.header(ManifestName, tar.TypeReg, int64(len(manifest))); err != nil {
			return err
		}
		if _, err := t.tw.Write(manifest); err != nil {
			return err
		}
		return t.tw.Close()
	})
	task.Done(err)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// writeAtomic writes through a temporary file next to path and renames it
// into place only when write and the sync succeeded; a failure or a
// cancellation removes it. Leftovers of a killed run (".NAME.*.partial") are
// removed first. It fills in the artifact's path, size and sha256.
func writeAtomic(path string, a *Artifact, write func(io.Writer) error) (err error) {
	dir, base := filepath.Dir(path), filepath.Base(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stale, _ := filepath.Glob(filepath.Join(dir, "."+base+".*.partial"))
	for _, s := range stale {
		os.Remove(s)
	}
	f, err := os.CreateTemp(dir, "."+base+".*.partial")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	// Writing and hashing the artifact run on their own goroutine, so they
	// overlap with reading and hashing the source (two cores, not one).
	aw := newAsyncWriter(cw)
	bw := bufio.NewWriterSize(aw, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := aw.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort
		d.Close()
	}
	a.Path, a.Size, a.SHA256 = path, cw.n, hex.EncodeToString(h.Sum(nil))
	return nil
}

// asyncWriter hands each Write's bytes to a goroutine that writes them to
// w. A write error stops the writing; later Writes and Close return it.
type asyncWriter struct {
	ch   chan []byte // filled buffers, in order
	free chan []byte // buffers to reuse
	done chan struct{}
	mu   sync.Mutex
	err  error
}

func newAsyncWriter(w io.Writer) *asyncWriter {
	const depth = 4
	a := &asyncWriter{ch: make(chan []byte, depth), free: make(chan []byte, depth+1), done: make(chan struct{})}
	for range depth + 1 {
		a.free <- nil
	}
	go func() {
		defer close(a.done)
		for b := range a.ch {
			if a.error() == nil {
				if _, err := w.Write(b); err != nil {
					a.mu.Lock()
					a.err = err
					a.mu.Unlock()
				}
			}
			a.free <- b
		}
	}()
	return a
}

func (a *asyncWriter) error() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	if err := a.error(); err != nil {
		return 0, err
	}
	b := <-a.free
	a.ch <- append(b[:0], p...)
	return len(p), nil
}

// Close waits until every queued byte is written; call it exactly once.
func (a *asyncWriter) Close() error {
	close(a.ch)
	<-a.done
	return a.error()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// tarOut writes the volume's entries with normalised metadata and hashes
// every file's bytes as they go into the tar.
type tarOut struct {
	ctx   context.Context
	tw    *tar.Writer
	mtime time.Time
	found Manifest
	seen  map[string]bool
	files int
	bytes int64
	task  *progress.Task
	buf   []byte
}

// index is backup/index.yaml, the fields LXD 5.0's backup.Info reads.
type index struct {
	Name            string `yaml:"name"`
	Backend         string `yaml:"backend"`
	Pool            string `yaml:"pool"`
	Optimized       bool   `yaml:"optimized"`
	OptimizedHeader bool   `yaml:"optimized_header"`
	Type            string `yaml:"type"`
	Config          struct {
		Volume indexVolume `yaml:"volume"`
	} `yaml:"config"`
}

type indexVolume struct {
	Config      map[string]string `yaml:"config"`
	Description string            `yaml:"description"`
	Name        string            `yaml:"name"`
	Type        string            `yaml:"type"`
	ContentType string            `yaml:"content_type"`
	CreatedAt   time.Time         `yaml:"created_at"`
}

func (t *tarOut) writeIndex(o Options, a *Artifact) error {
	var idx index
	// Backend and pool describe where the export came from; LXD imports a
	// non-optimized backup into any pool driver and names the pool itself.
	idx.Name, idx.Backend, idx.Pool, idx.Type = a.Volume, "dir", "default", "custom"
	v := &idx.Config.Volume
	v.Name, v.Type, v.ContentType, v.CreatedAt = a.Volume, "custom", "filesystem", t.mtime
	v.Description = fmt.Sprintf("ssbuild chainstate: %s %s from %s", a.Network, a.Kind, a.Source)
	v.Config = map[string]string{keyNetwork: a.Network, keyKind: a.Kind, keySource: a.Source}
	if a.Snapshot != nil {
		v.Config[keySnapshotHash] = a.Snapshot.BaseBlockHash
		v.Config[keySnapshotCoins] = strconv.FormatUint(a.Snapshot.CoinsCount, 10)
	}
	data, err := yaml.Marshal(idx) // map keys sorted: deterministic
	if err != nil {
		return err
	}
	hdr := t.hdr("backup/index.yaml", tar.TypeReg, int64(len(data)))
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = t.tw.Write(data)
	return err
}

func (t *tarOut) hdr(name string, typ byte, size int64) *tar.Header {
	mode := int64(0o644)
	if typ == tar.TypeDir {
		mode = 0o755
	}
	return &tar.Header{Name: name, Typeflag: typ, Size: size, Mode: mode, ModTime: t.mtime}
}

// header writes the header of a volume entry; name is relative to the
// volume root, "" being the root itself.
func (t *tarOut) header(name string, typ byte, size int64) error {
	if t.seen == nil {
		t.seen = map[string]bool{}
	}
	if t.seen[name] {
		return fmt.Errorf("%s: appears twice", name)
	}
	t.seen[name] = true
	full := strings.TrimSuffix(volumePrefix+name, "/")
	if typ == tar.TypeDir {
		full += "/"
	}
	return t.tw.WriteHeader(t.hdr(full, typ, size))
}

func (t *tarOut) dir(name string) error {
	if name != "" {
		if err := checkPath(name); err != nil {
			return err
		}
	}
	return t.header(name, tar.TypeDir, 0)
}

// file copies exactly size bytes of r into the tar and returns their sha256.
func (t *tarOut) file(name string, size int64, r io.Reader) (string, error) {
	if err := checkPath(name); err != nil {
		return "", err
	}
	if err := t.header(name, tar.TypeReg, size); err != nil {
		return "", err
	}
	h := sha256.New()
	if t.buf == nil {
		t.buf = make([]byte, 1<<20) // fewer, larger reads than io.Copy's 32 KiB
	}
	n, err := io.CopyBuffer(io.MultiWriter(t.tw, h), io.LimitReader(ctxReader{t.ctx, r}, size), t.buf)
	if err == nil && n < size {
		err = io.EOF
	}
	if errors.Is(err, io.EOF) {
		return "", fmt.Errorf("%s: %d of %d bytes: the file shrank while packing", name, n, size)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	t.found[name] = sum
	t.files++
	t.bytes += size
	return sum, nil
}

// fromDir packs a directory in WalkDir's (lexical) order. checked, when not
// nil, holds the digests the recipe's sha256 was checked against: a file
// that differs now changed in between.
func (t *tarOut) fromDir(src string, checked Manifest) error {
	return walkDir(src, func(rel string, d fs.DirEntry) error {
		if d.IsDir() {
			return t.dir(rel)
		}
		f, err := os.Open(filepath.Join(src, rel))
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		sum, err := t.file(rel, st.Size(), io.TeeReader(f, t.task))
		if err != nil {
			return err
		}
		if checked != nil && checked[rel] != sum {
			return fmt.Errorf("%s: changed since the recipe's sha256 was checked", rel)
		}
		return nil
	})
}

// fromFile packs one file (an AssumeUTXO snapshot) under its base name.
func (t *tarOut) fromFile(src, want string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	sum, err := t.file(filepath.Base(src), st.Size(), io.TeeReader(f, t.task))
	if err != nil {
		return err
	}
	if want != "" && sum != want {
		return fmt.Errorf("sha256 changed to %s while packing (checked: %s)", sum, want)
	}
	return nil
}

// fromTarball repacks a (gzip) tarball's directories and regular files in
// the tarball's order, with normalised metadata.
func (t *tarOut) fromTarball(src, want string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	var whole hash.Hash = sha256.New()
	raw := bufio.NewReaderSize(io.TeeReader(io.TeeReader(ctxReader{t.ctx, f}, whole), t.task), 1<<20)
	var r io.Reader = raw
	if magic, _ := raw.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(raw)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			if n == 0 {
				return errors.New("not a tar archive, or an empty one")
			}
			break
		}
		if err != nil {
			return fmt.Errorf("read tarball: %w", err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		if name == "" || name == "." {
			continue // the archive's root is the volume root
		}
		if strings.HasSuffix(name, "/") && hdr.Typeflag == tar.TypeDir {
			name = strings.TrimSuffix(name, "/")
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = t.dir(name)
		case tar.TypeReg:
			_, err = t.file(name, hdr.Size, tr)
		default:
			err = fmt.Errorf("%s: tar entry type %q: only directories and regular files are packed", hdr.Name, hdr.Typeflag)
		}
		if err != nil {
			return err
		}
	}
	// Read to the end so the whole file was hashed, padding included.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("read tarball: %w", err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return err
	}
	if got := hex.EncodeToString(whole.Sum(nil)); want != "" && got != want {
		return fmt.Errorf("sha256 changed to %s while packing (checked: %s)", got, want)
	}
	return nil
}

// inside reports whether path p is under directory dir.
func inside(p, dir string) bool {
	ap, err1 := filepath.Abs(p)
	ad, err2 := filepath.Abs(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(ad, ap)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// walkDir calls fn for every directory and regular file under root (not
// root itself) with its slash path relative to root, and refuses anything
// else: a symlink or device in a datadir is a mistake, not data.
func walkDir(root string, fn func(rel string, d fs.DirEntry) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !d.IsDir() && !d.Type().IsRegular() {
			return fmt.Errorf("%s: %s is not a regular file or directory", rel, d.Type())
		}
		return fn(rel, d)
	})
}

// hashDir builds the manifest of a directory.
func hashDir(ctx context.Context, root string, rep *progress.Reporter) (Manifest, error) {
	total := sourceSize(root, nil)
	task := rep.Start("chainstate: sha256 of "+filepath.Base(root), total, "bytes")
	m := Manifest{}
	err := walkDir(root, func(rel string, d fs.DirEntry) error {
		if d.IsDir() {
			return nil
		}
		if err := checkPath(rel); err != nil {
			return err
		}
		sum, err := hashFile(ctx, filepath.Join(root, rel), task)
		m[rel] = sum
		return err
	})
	task.Done(err)
	return m, err
}

// hashFile returns the sha256 of a file; progress counts the bytes read.
func hashFile(ctx context.Context, p string, progress io.Writer) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(h, progress), ctxReader{ctx, f}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sourceSize is the number of bytes a pack reads: a file's size or the sum
// of a directory's file sizes (0 when unknown).
func sourceSize(p string, st fs.FileInfo) int64 {
	if st != nil && !st.IsDir() {
		return st.Size()
	}
	var total int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// ctxReader stops a long copy when the context ends (Ctrl-C).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
