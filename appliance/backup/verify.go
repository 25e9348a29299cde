package backup

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"filippo.io/age"
	"github.com/klauspost/compress/s2"

	"github.com/sovereign-stack/ssbuild/internal/digest"
)

// VerifyOptions say how far Verify checks.
type VerifyOptions struct {
	// Identities, when given, decrypt every chunk to the end (age
	// authenticates each, so a changed byte fails).
	Identities []age.Identity
	// Signer is the trusted public key ("ed25519:..."); every manifest must
	// carry its signature. Without it a manifest's own signer is used,
	// which shows it is whole but not who wrote it.
	Signer string
}

// Verify is VerifyWith without a trusted signer.
func Verify(dir string, ids []age.Identity) (Manifest, error) {
	return VerifyWith(dir, VerifyOptions{Identities: ids})
}

// VerifyWith checks a backup (dir is backups/NAME in a folder) or every
// backup in a folder (dir is the folder): each manifest's signature, that
// SHA256SUMS lists it and its chunks with the manifest's sums, that every
// chunk it names has its sum, and that nothing else is in the backup's
// folder. Every problem is reported, each naming its file (and for a
// chunk, the backup and item that use it). It returns the manifest of the
// backup, or of the folder's newest.
func VerifyWith(dir string, o VerifyOptions) (Manifest, error) {
	top, names, err := resolve(dir)
	if err != nil {
		return Manifest{}, err
	}
	var pub ed25519.PublicKey
	if o.Signer != "" {
		if pub, err = ParseSigner(o.Signer); err != nil {
			return Manifest{}, err
		}
	}
	v := &verifier{top: top, pub: pub, ids: o.Identities, sums: map[string]string{}, plain: map[string]plainResult{}}
	if len(names) == 0 {
		v.bad("%s: no backup in the folder", backupsDir)
	}
	if len(names) > 1 || filepath.Clean(dir) == filepath.Clean(top) {
		v.strays()
	}
	var last Manifest
	for _, n := range names {
		if m, ok := v.backup(n); ok {
			last = m
		}
	}
	if len(v.problems) > 0 {
		return last, fmt.Errorf("backup %s:\n%s", dir, strings.Join(sortedUnique(v.problems), "\n"))
	}
	return last, nil
}

type plainResult struct {
	n   int64
	err error
}

type verifier struct {
	top      string
	pub      ed25519.PublicKey
	ids      []age.Identity
	sums     map[string]string      // chunk file → its sha256 ("" missing), each read once
	plain    map[string]plainResult // chunk file → decrypted length
	problems []string
}

func (v *verifier) bad(format string, args ...any) {
	v.problems = append(v.problems, fmt.Sprintf(format, args...))
}

// strays reports what is in the folder besides backups, chunks and the lock.
func (v *verifier) strays() {
	entries, err := os.ReadDir(v.top)
	if err != nil {
		v.bad("%v", err)
		return
	}
	for _, e := range entries {
		if n := e.Name(); n != chunksDir && n != backupsDir && n != lockFile {
			v.bad("%s: not part of any backup", n)
		}
	}
}

func (v *verifier) backup(name string) (Manifest, bool) {
	rel := path.Join(backupsDir, name)
	dir := filepath.Join(v.top, backupsDir, name)
	if !finished(v.top, name) {
		v.bad("%s: not a finished backup: it was cut short (the next backup into the folder reuses the chunks its checkpoint names; `backup prune` removes it)", rel)
		return Manifest{}, false
	}
	sums, err := readSums(dir)
	if err != nil {
		v.bad("%s: %v", rel, err)
		return Manifest{}, false
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if n := e.Name(); n != ManifestFile && n != SigFile && n != SumsFile {
			v.bad("%s: not part of the backup", path.Join(rel, n))
		}
	}
	for _, f := range []string{ManifestFile, SigFile} {
		p := path.Join(rel, f)
		want, ok := sums[p]
		if !ok {
			v.bad("%s: not in %s", p, path.Join(rel, SumsFile))
			continue
		}
		got, _, err := digest.File(filepath.Join(dir, f))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			v.bad("%s: missing", p)
		case err != nil:
			v.bad("%s: %v", p, err)
		case got != want:
			v.bad("%s: sha256 %s, %s says %s: the file changed", p, got, SumsFile, want)
		}
	}
	m, signer, err := readSigned(v.top, name, v.pub)
	if err != nil {
		v.bad("%s: %v", rel, err)
		return m, false
	}
	if v.pub != nil && signer != "" {
		if p, err := ParseSigner(signer); err != nil || !p.Equal(v.pub) {
			v.bad("%s: the manifest names signer %s, not the trusted one", rel, signer)
		}
	}
	if err := checkFormat(m); err != nil {
		v.bad("%s: %v", rel, err)
		return m, false
	}
	v.checkChunks(m)
	ok := true
	for _, it := range m.Items {
		var plain int64
		for _, c := range it.Chunks {
			cp := chunkPath(c.ID)
			where := fmt.Sprintf("%s (%s in %s)", cp, it.File, rel)
			if want, listed := sums[cp]; !listed || want != c.SHA256 {
				v.bad("%s: %s does not list it with the manifest's sha256", where, path.Join(rel, SumsFile))
				ok = false
				continue
			}
			got, seen := v.sums[cp]
			if !seen {
				var err error
				got, _, err = digest.File(filepath.Join(v.top, filepath.FromSlash(cp)))
				if err != nil {
					got = ""
				}
				v.sums[cp] = got
			}
			switch {
			case got == "":
				v.bad("%s: missing or unreadable", where)
				ok = false
				continue
			case got != c.SHA256:
				v.bad("%s: sha256 %s, the manifest says %s: the file changed", where, got, c.SHA256)
				ok = false
				continue
			}
			if len(v.ids) == 0 {
				continue
			}
			r, seen := v.plain[cp]
			if !seen {
				r.n, r.err = decryptChunk(v.top, c.ID, v.ids, io.Discard)
				v.plain[cp] = r
			}
			if r.err != nil {
				v.bad("%s: %v", where, r.err)
				ok = false
			}
			plain += r.n
		}
		if len(v.ids) > 0 && ok && plain != it.Size {
			v.bad("%s in %s: %d bytes decrypted, the manifest says %d", it.File, rel, plain, it.Size)
			ok = false
		}
	}
	return m, ok
}

// checkChunks reads each chunk file the manifest names that no earlier
// backup named, once and on every core: its sha256 and, with identities,
// its decrypted length (restore waits for this before it changes anything).
func (v *verifier) checkChunks(m Manifest) {
	var todo []string
	seen := map[string]bool{}
	for _, it := range m.Items {
		for _, c := range it.Chunks {
			if cp := chunkPath(c.ID); !seen[cp] && v.sums[cp] == "" {
				seen[cp] = true
				todo = append(todo, c.ID)
			}
		}
	}
	sums := make([]string, len(todo))
	plains := make([]plainResult, len(todo))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(todo); i = int(next.Add(1) - 1) {
				b, err := os.ReadFile(filepath.Join(v.top, filepath.FromSlash(chunkPath(todo[i]))))
				if err != nil {
					continue // "" : missing or unreadable
				}
				s := sha256.Sum256(b)
				sums[i] = hex.EncodeToString(s[:])
				if len(v.ids) > 0 {
					plains[i].n, plains[i].err = decryptFrom(bytes.NewReader(b), v.ids, io.Discard)
				}
			}
		}()
	}
	wg.Wait()
	for i, id := range todo {
		cp := chunkPath(id)
		v.sums[cp] = sums[i]
		if len(v.ids) > 0 && sums[i] != "" {
			v.plain[cp] = plains[i]
		}
	}
}

// resolve reads dir as a folder of backups (all of them) or one backup
// (backups/NAME inside a folder).
func resolve(dir string) (top string, names []string, err error) {
	if fi, err := os.Stat(filepath.Join(dir, backupsDir)); err == nil && fi.IsDir() {
		names, err := backupNames(dir)
		return dir, names, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if filepath.Base(parent) == backupsDir {
		if _, err := os.Stat(dir); err != nil {
			return "", nil, fmt.Errorf("backup %s: %w", dir, err)
		}
		return filepath.Dir(parent), []string{filepath.Base(filepath.Clean(dir))}, nil
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err == nil {
		return "", nil, fmt.Errorf("backup %s: a backup of the first format (one file per item), which this ssbuild does not read", dir)
	}
	return "", nil, fmt.Errorf("backup %s: not a backup folder (no %s/ in it)", dir, backupsDir)
}

// Latest is the folder of the newest finished backup of project in dir
// (a folder of backups), or dir itself when it is one backup.
func Latest(dir, project string) (string, error) {
	top, names, err := resolve(dir)
	if err != nil {
		return "", err
	}
	if filepath.Clean(dir) != filepath.Clean(top) {
		return dir, nil
	}
	for i := len(names) - 1; i >= 0; i-- {
		if !finished(top, names[i]) {
			continue
		}
		if m, err := readManifest(top, names[i]); err == nil && (project == "" || m.Project == project) {
			return filepath.Join(top, backupsDir, names[i]), nil
		}
	}
	if project == "" {
		return "", fmt.Errorf("backup folder %s holds no finished backup", dir)
	}
	return "", fmt.Errorf("backup folder %s holds no finished backup of %s", dir, project)
}

// Decrypt writes the plain content of an item (its name in the manifest)
// to w; dir is a backup, or a folder of backups (its newest then).
func Decrypt(dir, file string, ids []age.Identity, w io.Writer) error {
	b, err := Latest(dir, "")
	if err != nil {
		return err
	}
	top, names, err := resolve(b)
	if err != nil {
		return err
	}
	m, err := readManifest(top, names[0])
	if err == nil {
		err = checkFormat(m)
	}
	if err != nil {
		return fmt.Errorf("backup %s: %w", b, err)
	}
	for _, it := range m.Items {
		if it.File != file {
			continue
		}
		return decryptItem(top, it, ids, w)
	}
	return fmt.Errorf("backup %s has no item %s", b, file)
}

// decryptItem writes an item's chunks in order, the next one decrypted
// while the last is written (a restore's tar or dump command reads them).
func decryptItem(top string, it Item, ids []age.Identity, w io.Writer) error {
	type piece struct {
		b   []byte
		err error
	}
	ch := make(chan piece, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(ch)
		for _, c := range it.Chunks {
			var b bytes.Buffer
			_, err := decryptChunk(top, c.ID, ids, &b)
			if err != nil {
				err = fmt.Errorf("%s: %w", chunkPath(c.ID), err)
			}
			select {
			case ch <- piece{b.Bytes(), err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for p := range ch {
		if p.err != nil {
			return p.err
		}
		if _, err := w.Write(p.b); err != nil {
			return err
		}
	}
	return nil
}

func decryptChunk(top, id string, ids []age.Identity, w io.Writer) (int64, error) {
	f, err := os.Open(filepath.Join(top, filepath.FromSlash(chunkPath(id))))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return decryptFrom(bufio.NewReaderSize(f, 1<<20), ids, w)
}

// decryptFrom decrypts one chunk file's content and writes its plain bytes.
func decryptFrom(in io.Reader, ids []age.Identity, w io.Writer) (int64, error) {
	r, err := age.Decrypt(in, ids...)
	if err != nil {
		return 0, fmt.Errorf("decrypt: %w", err)
	}
	buf := decodeBufs.Get().(*bytes.Buffer)
	defer decodeBufs.Put(buf)
	buf.Reset()
	limit := 1 + s2.MaxEncodedLen(maxChunk)
	if _, err := buf.ReadFrom(io.LimitReader(r, int64(limit)+1)); err != nil {
		return 0, fmt.Errorf("decrypt: %w", err)
	}
	if buf.Len() > limit {
		return 0, errors.New("decrypt: more bytes than a chunk holds")
	}
	plain, err := decodePayload(buf.Bytes())
	if err != nil {
		return 0, fmt.Errorf("decrypt: %w", err)
	}
	n, err := w.Write(plain)
	return int64(n), err
}

var decodeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// checkFormat refuses a manifest of another format than this ssbuild's.
func checkFormat(m Manifest) error {
	if m.Format != format {
		return fmt.Errorf("%s: format %d, written by another ssbuild (this one reads format %d: compressed chunks under other names); verify and restore it with the ssbuild that wrote it", ManifestFile, m.Format, format)
	}
	return nil
}

// ReadIdentities reads age identities (age-keygen's file) from path.
func ReadIdentities(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		// age's message never quotes the key material.
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return ids, nil
}

func readSums(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, SumsFile))
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	for i, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 64 || name == "" || strings.Contains(name, "..") || strings.HasPrefix(name, "/") {
			return nil, fmt.Errorf("%s line %d is not \"SHA256  FILE\"", SumsFile, i+1)
		}
		sums[name] = sum
	}
	return sums, nil
}

func sortedUnique(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}
