package backup

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/s2"
	"golang.org/x/sys/unix"
)

// The folder holds any number of backups that share their chunks:
//
//	chunks/<2 hex>/<64 hex>.age   one chunk, age-encrypted on its own; its name
//	                              is the keyed BLAKE3 of its plain bytes under the
//	                              deployment's chunk key (see Keys)
//	backups/<name>/manifest.json  one backup: its items, each a list of chunks
//	                              (name, size and sha256 of the encrypted file)
//	backups/<name>/manifest.sig   Ed25519 signature of manifest.json
//	backups/<name>/SHA256SUMS     written last, so a backup with it is whole;
//	                              paths relative to the folder
//	                              (cd DIR && sha256sum -c backups/<name>/SHA256SUMS)
//	.lock                         held by backup and prune
const (
	chunksDir   = "chunks"
	backupsDir  = "backups"
	lockFile    = ".lock"
	SigFile     = "manifest.sig"
	nameLayout  = "2006-01-02T150405Z"
	chunkSuffix = ".age"
)

// Chunk is one stored piece of an item.
type Chunk struct {
	ID     string `json:"id"`     // keyed BLAKE3-256 of the plain bytes, hex
	Size   int64  `json:"size"`   // of the encrypted file
	SHA256 string `json:"sha256"` // of the encrypted file
}

// chunkPath is a chunk's file, relative to the folder, with slashes.
func chunkPath(id string) string { return path.Join(chunksDir, id[:2], id+chunkSuffix) }

// Stats say what one backup read and wrote.
type Stats struct {
	Read      int64 // plain bytes of every item
	Chunks    int   // chunks the backup names
	New       int   // of them, written by this backup
	NewBytes  int64 // encrypted bytes written
	Reused    int   // named by an earlier backup and left as they were
	Resumed   int   // of them, written by an interrupted backup (resume.go)
	Duplicate int   // met twice in this backup
	// Volume paths read by AddVolume: regular files and their bytes in
	// the listings, and of them those read (the others' groups were named
	// again from the files cache without a read).
	VolumeFiles, VolumeFilesRead int
	VolumeBytes, VolumeBytesRead int64
}

// Writer adds one new backup to a folder. Its Add methods may run at
// once (their items are listed in the order they end); Close after all.
type Writer struct {
	top, name string
	m         Manifest
	keys      *Keys
	recips    []age.Recipient
	unlock    func()
	Stats     Stats
	// FilesCache is the folder of the files caches (volume.go) on this
	// machine; "" reads every volume path whole.
	FilesCache string
	groupShape groupShape     // of volume paths (tests make it small)
	afterClose []func() error // once the backup is whole: the files caches

	cp      *checkpoints // resume.go
	resumed []string     // interrupted backups whose checkpoints named chunks

	mu          sync.Mutex
	known       map[string]Chunk // signed by this key in the folder's earlier backups
	resumable   map[string]bool  // of them, named only by an interrupted backup's checkpoint
	written     map[string]Chunk // named by this backup so far
	fresh       []string         // chunk files this backup wrote
	freshChunks []Chunk          // and their names, sizes and sums
}

// NewWriter starts a backup in the folder top: new, empty, or holding
// earlier backups (of any deployment; only this key's chunks are reused).
// m is the manifest so far (deployment, recipients, ...).
func NewWriter(top string, m Manifest, keys *Keys, recips []age.Recipient) (*Writer, error) {
	return newWriter(top, m, keys, recips, checkpointEvery)
}

// newWriter is NewWriter with a checkpoint every interval (tests make it short).
func newWriter(top string, m Manifest, keys *Keys, recips []age.Recipient, every time.Duration) (*Writer, error) {
	if top == "" {
		return nil, errors.New("no backup folder given (--to DIR)")
	}
	if err := checkFolder(top); err != nil {
		return nil, err
	}
	unlock, err := lockFolder(top)
	if err != nil {
		return nil, err
	}
	w := &Writer{top: top, m: m, keys: keys, recips: recips, unlock: unlock,
		known: map[string]Chunk{}, resumable: map[string]bool{}, written: map[string]Chunk{}, groupShape: defaultGroups}
	if err := w.start(); err != nil {
		unlock()
		return nil, err
	}
	w.startCheckpoints(every)
	return w, nil
}

func (w *Writer) start() error {
	for _, d := range []string{chunksDir, backupsDir} {
		if err := os.MkdirAll(filepath.Join(w.top, d), 0o700); err != nil {
			return fmt.Errorf("backup folder %s: %w", w.top, err)
		}
	}
	base := w.m.Created.UTC().Format(nameLayout)
	for i := 1; ; i++ {
		w.name = base
		if i > 1 {
			w.name = fmt.Sprintf("%s-%d", base, i)
		}
		err := os.Mkdir(filepath.Join(w.top, backupsDir, w.name), 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("backup folder %s: %w", w.top, err)
		}
	}
	// The chunks of earlier backups this key signed can be named again;
	// another key's names never match (the names are keyed).
	names, err := backupNames(w.top)
	if err != nil {
		return err
	}
	pub := w.keys.sign.Public().(ed25519.PublicKey)
	for _, n := range names {
		if n == w.name {
			continue
		}
		if !finished(w.top, n) {
			chunks, err := w.readCheckpoint(n)
			if err != nil {
				continue // none, or not this key's: an unfinished backup's files are not trusted
			}
			w.resumed = append(w.resumed, n)
			for _, c := range chunks {
				if _, ok := w.known[c.ID]; !ok {
					w.known[c.ID] = c
					w.resumable[c.ID] = true
				}
			}
			continue
		}
		m, _, err := readSigned(w.top, n, pub)
		if err != nil || m.Format != format {
			continue // not ours, unfinished, damaged or of another format: its chunks are not trusted
		}
		for _, it := range m.Items {
			for _, c := range it.Chunks {
				w.known[c.ID] = c
				delete(w.resumable, c.ID)
			}
		}
	}
	return nil
}

// Name is the new backup's name in the folder.
func (w *Writer) Name() string { return w.name }

// Add stores one item: fill writes its plain content.
func (w *Writer) Add(it Item, fill func(io.Writer) error) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(fill(pw)) }()
	err := w.add(&it, pr)
	pr.CloseWithError(err) // stops fill if the store failed
	if err != nil {
		return err
	}
	w.put(it)
	return nil
}

// AddReader stores one item read from r.
func (w *Writer) AddReader(it Item, r io.Reader) error {
	if err := w.add(&it, r); err != nil {
		return err
	}
	w.put(it)
	return nil
}

// put lists a stored item in the manifest.
func (w *Writer) put(it Item) {
	w.mu.Lock()
	w.m.Items = append(w.m.Items, it)
	w.mu.Unlock()
}

// add chunks r and stores every chunk not stored yet.
func (w *Writer) add(it *Item, r io.Reader) error {
	s := w.newItemStore()
	s.chunk(r)
	return s.finish(it)
}

// itemStore stores one item's chunks: the chunks' names are keyed hashes
// and their encryption runs on every core. An item is fed as pieces,
// each cut on its own (its end is a cut), or named by chunks the folder
// holds already (a volume's unchanged files, see volume.go).
type itemStore struct {
	w    *Writer
	jobs chan storeJob
	wg   sync.WaitGroup
	size int64
	// c cuts every piece: a volume's groups go on in its buffer, not one
	// new 32 MiB buffer each (page faults and zeroing once the pool is
	// emptied by a GC).
	c *chunker

	mu       sync.Mutex
	ids      []string
	firstErr error
}

type storeJob struct {
	i       int
	data    []byte
	release func()
}

func (w *Writer) newItemStore() *itemStore {
	workers := runtime.GOMAXPROCS(0)
	s := &itemStore{w: w, jobs: make(chan storeJob, workers)}
	for range workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for j := range s.jobs {
				id, err := w.store(j.data) // keeps nothing of data
				j.release()
				if err != nil {
					s.fail(err)
					continue
				}
				s.mu.Lock()
				s.ids[j.i] = id
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *itemStore) fail(err error) {
	s.mu.Lock()
	if s.firstErr == nil {
		s.firstErr = err
	}
	s.mu.Unlock()
}

func (s *itemStore) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstErr
}

// chunk cuts r to its end and stores its chunks; it returns the index of
// its first chunk in the item and their number (their names are known
// once finish returned), and the bytes read.
func (s *itemStore) chunk(r io.Reader) (first, n int, size int64) {
	if s.c == nil {
		s.c = newChunker(r, &s.w.keys.gear)
	} else {
		s.c.reset(r)
	}
	c := s.c
	s.mu.Lock()
	first = len(s.ids)
	s.mu.Unlock()
	for {
		data, release, err := c.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.fail(err)
			break
		}
		s.mu.Lock()
		i := len(s.ids)
		s.ids = append(s.ids, "")
		stop := s.firstErr != nil
		s.mu.Unlock()
		if stop {
			release()
			break
		}
		size += int64(len(data))
		n++
		s.jobs <- storeJob{i, data, release}
	}
	s.size += size
	return first, n, size
}

// reuse names chunks the folder holds (checked by have) as the item's next.
func (s *itemStore) reuse(ids []string, size int64) {
	s.w.mu.Lock()
	for _, id := range ids {
		if _, ok := s.w.written[id]; ok {
			s.w.Stats.Duplicate++
			continue
		}
		s.w.written[id] = s.w.known[id]
		s.w.Stats.Reused++
		if s.w.resumable[id] {
			s.w.Stats.Resumed++
		}
	}
	s.w.mu.Unlock()
	s.mu.Lock()
	s.ids = append(s.ids, ids...)
	s.mu.Unlock()
	s.size += size
}

// finish waits for every chunk and fills in the item's chunks and size.
func (s *itemStore) finish(it *Item) error {
	if s.c != nil {
		s.c.close()
	}
	close(s.jobs)
	s.wg.Wait()
	if s.firstErr != nil {
		return s.firstErr
	}
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	it.Size, it.Chunks = s.size, make([]Chunk, len(s.ids))
	for i, id := range s.ids {
		it.Chunks[i] = w.written[id]
	}
	w.Stats.Read += s.size
	w.Stats.Chunks += len(s.ids)
	return nil
}

// have says whether the folder holds every chunk, as store checks one:
// named by an earlier backup of this key, its file there with its size.
func (w *Writer) have(ids []string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		if _, ok := w.written[id]; ok {
			continue
		}
		c, ok := w.known[id]
		if !ok {
			return false
		}
		fi, err := os.Stat(filepath.Join(w.top, filepath.FromSlash(chunkPath(id))))
		if err != nil || fi.Size() != c.Size {
			return false
		}
	}
	return true
}

// store names a chunk and writes it unless the folder has it already.
func (w *Writer) store(data []byte) (string, error) {
	id := w.keys.chunkName(data)
	p := filepath.Join(w.top, filepath.FromSlash(chunkPath(id)))
	w.mu.Lock()
	if _, ok := w.written[id]; ok {
		w.Stats.Duplicate++
		w.mu.Unlock()
		return id, nil
	}
	if c, ok := w.known[id]; ok {
		if fi, err := os.Stat(p); err == nil && fi.Size() == c.Size {
			w.written[id] = c
			w.Stats.Reused++
			if w.resumable[id] {
				w.Stats.Resumed++
			}
			w.mu.Unlock()
			return id, nil
		}
	}
	w.written[id] = Chunk{ID: id} // others meeting it wait for nothing: it is filled before add returns
	w.mu.Unlock()
	c, err := writeChunk(p, id, data, w.recips)
	if err != nil {
		return "", fmt.Errorf("chunk %s: %w", chunkPath(id), err)
	}
	w.mu.Lock()
	w.written[id] = c
	w.fresh = append(w.fresh, p)
	w.freshChunks = append(w.freshChunks, c)
	w.Stats.New++
	w.Stats.NewBytes += c.Size
	w.mu.Unlock()
	return id, nil
}

// Chunk payloads (format 3): the age-encrypted content of a chunk file is
// one byte saying how the plain bytes follow, then them. S2 (Snappy's
// faster successor, klauspost/compress) costs about the CPU the bytes it
// spares would cost to encrypt, hash and write, and spares two thirds of
// the writes, syncs and folder size: on the benchmark's tree it takes
// 445 MiB to 148 MiB, a pg_dump 18 to 1 at 5 GB/s, .mo files 2 to 1 at
// 0.6 GB/s. Chunks it barely shrinks (already compressed files) are kept
// raw, so restoring them costs no decoding.
const (
	payloadRaw = 0
	payloadS2  = 1
)

var (
	encodeBufs = sync.Pool{New: func() any { b := make([]byte, 1+s2.MaxEncodedLen(maxChunk)); return &b }}
	cipherBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// encodePayload returns the chunk's payload in a pooled buffer (put it
// back with encodeBufs.Put(buf) when done).
func encodePayload(data []byte) (payload []byte, buf *[]byte) {
	buf = encodeBufs.Get().(*[]byte)
	b := *buf
	enc := s2.Encode(b[1:], data)
	if len(enc) < len(data)-len(data)/16 {
		b[0] = payloadS2
		return b[:1+len(enc)], buf
	}
	b[0] = payloadRaw
	return append(b[:1], data...), buf
}

// decodePayload is the chunk's plain bytes.
func decodePayload(p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, errors.New("empty chunk payload")
	}
	switch p[0] {
	case payloadRaw:
		return p[1:], nil
	case payloadS2:
		n, err := s2.DecodedLen(p[1:])
		if err != nil {
			return nil, fmt.Errorf("chunk payload: %w", err)
		}
		if n > maxChunk {
			return nil, fmt.Errorf("chunk payload: %d bytes decoded, more than a chunk holds", n)
		}
		out, err := s2.Decode(make([]byte, n), p[1:])
		if err != nil {
			return nil, fmt.Errorf("chunk payload: %w", err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("chunk payload: unknown encoding %d", p[0])
}

// writeChunk encrypts the chunk's payload into memory, hashing it there,
// and writes the file with one write (age's stream would write each 64 KiB
// segment on its own).
func writeChunk(p, id string, data []byte, recips []age.Recipient) (c Chunk, err error) {
	payload, buf := encodePayload(data)
	defer encodeBufs.Put(buf)
	ct := cipherBufs.Get().(*bytes.Buffer)
	defer cipherBufs.Put(ct)
	ct.Reset()
	ct.Grow(len(payload) + len(payload)/(64<<10)*16 + 1024) // age: 16 bytes per 64 KiB segment, a header
	enc, err := age.Encrypt(ct, recips...)
	if err != nil {
		return c, err
	}
	if _, err := enc.Write(payload); err != nil {
		return c, err
	}
	if err := enc.Close(); err != nil {
		return c, err
	}
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrNotExist) { // the prefix folder's first chunk: a mkdir then, not one per chunk
		if err = os.MkdirAll(filepath.Dir(p), 0o700); err == nil {
			f, err = os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
		}
	}
	if err != nil {
		return c, err
	}
	_, err = f.Write(ct.Bytes())
	if err == nil {
		// Start writing it out now, not when the backup's sync asks: the
		// disk then works while the next chunks are cut and compressed
		// (a full backup's sync waited 65–80 ms for 148 MiB; it took 12%
		// off the benchmark's full backup). An I/O error shows at that sync.
		unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return c, err
	}
	s := sha256.Sum256(ct.Bytes())
	return Chunk{ID: id, Size: int64(ct.Len()), SHA256: hex.EncodeToString(s[:])}, nil
}

// Close finishes the backup: every chunk on disk first, then the manifest
// and its signature, then SHA256SUMS, renamed into place last, so a backup
// with SHA256SUMS is whole.
func (w *Writer) Close() (Manifest, error) {
	defer w.unlock()
	w.stopCheckpoints()
	m := w.m
	m.Format, m.Name, m.Signer, m.Stats = format, w.name, w.keys.Signer(), w.Stats
	if err := w.syncChunks(); err != nil {
		return m, err
	}
	if err := w.dropCheckpoint(); err != nil {
		return m, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	b = append(b, '\n')
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(w.keys.sign, b)) + "\n"
	dir := filepath.Join(w.top, backupsDir, w.name)
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), b, 0o600); err != nil {
		return m, err
	}
	if err := os.WriteFile(filepath.Join(dir, SigFile), []byte(sig), 0o600); err != nil {
		return m, err
	}
	rel := path.Join(backupsDir, w.name)
	lines := []string{sum(b) + "  " + path.Join(rel, ManifestFile), sum([]byte(sig)) + "  " + path.Join(rel, SigFile)}
	seen := map[string]bool{}
	var chunks []string
	for _, it := range m.Items {
		for _, c := range it.Chunks {
			if !seen[c.ID] {
				seen[c.ID] = true
				chunks = append(chunks, c.SHA256+"  "+chunkPath(c.ID))
			}
		}
	}
	sort.Slice(chunks, func(i, j int) bool { return chunks[i][66:] < chunks[j][66:] })
	lines = append(lines, chunks...)
	tmp := filepath.Join(dir, SumsFile+".tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return m, err
	}
	if err := fsyncAll([]string{filepath.Join(dir, ManifestFile), filepath.Join(dir, SigFile), tmp}); err != nil {
		return m, err
	}
	if err := os.Rename(tmp, filepath.Join(dir, SumsFile)); err != nil {
		return m, err
	}
	for _, n := range w.resumed { // whole now: what they wrote that it needs, it names
		if err := os.RemoveAll(filepath.Join(w.top, backupsDir, n)); err != nil {
			return m, err
		}
	}
	if err := fsyncAll([]string{dir, filepath.Join(w.top, backupsDir)}); err != nil {
		return m, err
	}
	for _, f := range w.afterClose {
		f() // a cache not written costs the next backup a full read, no more
	}
	return m, nil
}

// syncChunks puts the chunks this backup wrote on disk: one by one when
// they are few (an incremental backup then waits for nothing else written
// to the file system), else with one syncfs.
func (w *Writer) syncChunks() error {
	if len(w.fresh) > 64 {
		return syncFolder(w.top)
	}
	// The chunks and their folders together: nothing names them until the
	// manifest is written, after.
	dirs := map[string]bool{filepath.Join(w.top, chunksDir): true}
	paths := slices.Clone(w.fresh)
	for _, p := range w.fresh {
		if d := filepath.Dir(p); !dirs[d] {
			dirs[d] = true
			paths = append(paths, d)
		}
	}
	return fsyncAll(append(paths, filepath.Join(w.top, chunksDir)))
}

// fsyncAll syncs the files at once: the file system commits its journal
// once for all of them, not once for each in turn (an incremental backup
// writes few chunks and waits mostly for these syncs).
func fsyncAll(paths []string) error {
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fsync(p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func fsync(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}

// Abort leaves the unfinished backup for the next one to resume when it
// wrote a checkpoint, else removes it; chunks it wrote stay until prune.
func (w *Writer) Abort() {
	w.stopCheckpoints()
	if w.cp.written == 0 {
		os.RemoveAll(filepath.Join(w.top, backupsDir, w.name))
	}
	w.unlock()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// syncFolder flushes the folder's file system (one syncfs, not a sync per
// chunk).
func syncFolder(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// checkFolder accepts a new folder, an empty one (a fresh mount point) or
// one that holds backups and nothing else.
func checkFolder(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.MkdirAll(dir, 0o700)
	case err != nil:
		return fmt.Errorf("backup folder %s: %w", dir, err)
	}
	for _, e := range entries {
		switch e.Name() {
		case chunksDir, backupsDir, lockFile:
		case ManifestFile, SumsFile:
			return fmt.Errorf("backup folder %s holds a backup of the first format (one file per item), which this ssbuild does not add to: give a new or empty folder", dir)
		default:
			return fmt.Errorf("backup folder %s holds %s, which no backup wrote: give a new or empty folder, or one that holds only backups", dir, e.Name())
		}
	}
	return nil
}

// lockFolder takes the folder's lock: one backup or prune at a time.
func lockFolder(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("backup folder %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("backup folder %s: another backup or prune is running in it (%w)", dir, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// backupNames lists the backups in the folder, oldest first (the names
// are their UTC start times).
func backupNames(top string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(top, backupsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

func finished(top, name string) bool {
	_, err := os.Stat(filepath.Join(top, backupsDir, name, SumsFile))
	return err == nil
}

// readSigned reads a backup's manifest and checks its signature: under
// pub when given, else under the manifest's own signer (which proves only
// that it is whole). It returns the manifest and its signer.
func readSigned(top, name string, pub ed25519.PublicKey) (Manifest, string, error) {
	var m Manifest
	dir := filepath.Join(top, backupsDir, name)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, "", err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, "", fmt.Errorf("%s: %w", ManifestFile, err)
	}
	sig, err := os.ReadFile(filepath.Join(dir, SigFile))
	if err != nil {
		return m, m.Signer, err
	}
	s, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sig)))
	if err != nil {
		return m, m.Signer, fmt.Errorf("%s: not a signature", SigFile)
	}
	if pub == nil {
		if pub, err = ParseSigner(m.Signer); err != nil {
			return m, m.Signer, fmt.Errorf("%s: %w", ManifestFile, err)
		}
	}
	if !ed25519.Verify(pub, b, s) {
		return m, m.Signer, fmt.Errorf("%s: the signature does not match (the manifest changed, or another key signed it)", ManifestFile)
	}
	if m.Name != name {
		return m, m.Signer, fmt.Errorf("%s: it is backup %s's manifest, not %s's", ManifestFile, m.Name, name)
	}
	return m, m.Signer, nil
}

// Listing is one backup in a folder.
type Listing struct {
	Name       string
	Deployment string
	Project    string
	Created    time.Time
	Finished   bool
	Items      int
	Size       int64 // plain bytes
	Stored     int64 // encrypted bytes of the chunks it names
	New        int64 // of them, bytes no older backup in the folder names
	Signer     string
	Err        string // why its manifest could not be read
}

// Folder is what a backup folder holds.
type Folder struct {
	Backups      []Listing // oldest first
	UnusedChunks int       // chunk files no backup names (left by an interrupted run; prune removes them)
	UnusedBytes  int64
}

// List reads every backup's manifest (without checking signatures or
// chunks: that is Verify's).
func List(top string) (Folder, error) {
	var f Folder
	names, err := backupNames(top)
	if err != nil {
		return f, fmt.Errorf("backup folder %s: %w", top, err)
	}
	if _, err := os.Stat(filepath.Join(top, backupsDir)); err != nil {
		return f, fmt.Errorf("backup folder %s: %w", top, err)
	}
	named := map[string]bool{}
	for _, n := range names {
		l := Listing{Name: n, Finished: finished(top, n)}
		var m Manifest
		b, err := os.ReadFile(filepath.Join(top, backupsDir, n, ManifestFile))
		if err == nil {
			err = json.Unmarshal(b, &m)
		}
		if err != nil {
			if l.Finished || !errors.Is(err, fs.ErrNotExist) { // else cut short before its manifest
				l.Err = err.Error()
			}
			f.Backups = append(f.Backups, l)
			continue
		}
		l.Deployment, l.Project, l.Created, l.Items, l.Signer = m.Deployment, m.Project, m.Created, len(m.Items), m.Signer
		for _, it := range m.Items {
			l.Size += it.Size
			for _, c := range it.Chunks {
				l.Stored += c.Size
				if !named[c.ID] {
					named[c.ID] = true
					l.New += c.Size
				}
			}
		}
		f.Backups = append(f.Backups, l)
	}
	err = walkChunks(top, func(p string, id string, size int64) error {
		if !named[id] {
			f.UnusedChunks++
			f.UnusedBytes += size
		}
		return nil
	})
	return f, err
}

// walkChunks calls fn for each file under chunks/ (id "" for one that is
// not a chunk, such as an interrupted write's .tmp).
func walkChunks(top string, fn func(p, id string, size int64) error) error {
	root := filepath.Join(top, chunksDir)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		id, ok := strings.CutSuffix(d.Name(), chunkSuffix)
		if !ok || len(id) != 64 {
			id = ""
		}
		return fn(p, id, fi.Size())
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// PruneReport says what prune removed.
type PruneReport struct {
	Removed     []string // backups
	Chunks      int
	FreedBytes  int64
	KeptBackups int
}

// Prune keeps the newest keep finished backups of each deployment,
// removes the older ones and unfinished ones (under the folder's lock, so
// not a running one), then every chunk no kept backup names. A manifest
// it cannot read stops it before anything is removed.
func Prune(top string, keep int) (PruneReport, error) {
	var r PruneReport
	if keep < 1 {
		return r, errors.New("prune keeps at least one backup (--keep N, N ≥ 1)")
	}
	if _, err := os.Stat(filepath.Join(top, backupsDir)); err != nil {
		return r, fmt.Errorf("backup folder %s: %w", top, err)
	}
	unlock, err := lockFolder(top)
	if err != nil {
		return r, err
	}
	defer unlock()
	f, err := List(top)
	if err != nil {
		return r, err
	}
	perProject := map[string]int{}
	var drop []string
	keepSet := map[string]bool{}
	for i := len(f.Backups) - 1; i >= 0; i-- { // newest first
		l := f.Backups[i]
		switch {
		case !l.Finished:
			drop = append(drop, l.Name)
		case l.Err != "":
			return r, fmt.Errorf("backup folder %s: backup %s: %s; nothing removed", top, l.Name, l.Err)
		case perProject[l.Project] < keep:
			perProject[l.Project]++
			keepSet[l.Name] = true
		default:
			drop = append(drop, l.Name)
		}
	}
	named := map[string]bool{}
	for n := range keepSet {
		m, err := readManifest(top, n)
		if err != nil {
			return r, fmt.Errorf("backup folder %s: backup %s: %w; nothing removed", top, n, err)
		}
		for _, it := range m.Items {
			for _, c := range it.Chunks {
				named[c.ID] = true
			}
		}
	}
	sort.Strings(drop)
	for _, n := range drop {
		dir := filepath.Join(top, backupsDir, n)
		// SHA256SUMS first: a prune cut short leaves an unfinished backup, never a whole-looking one without chunks.
		if err := os.Remove(filepath.Join(dir, SumsFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return r, err
		}
		if err := os.RemoveAll(dir); err != nil {
			return r, err
		}
		r.Removed = append(r.Removed, n)
	}
	if err := syncFolder(top); err != nil {
		return r, err
	}
	err = walkChunks(top, func(p, id string, size int64) error {
		if id != "" && named[id] {
			return nil
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		r.Chunks++
		r.FreedBytes += size
		return nil
	})
	r.KeptBackups = len(keepSet)
	return r, err
}

func readManifest(top, name string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(top, backupsDir, name, ManifestFile))
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	return m, err
}
