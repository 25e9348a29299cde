package backup

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// A backup cut short (the process killed, the disk pulled, a step that
// failed) has written chunks no manifest names, and the next backup
// cannot trust an unnamed file: whoever can write the folder could have
// put it there. So while a backup runs it lists, every checkpointEvery,
// the chunks it has written and synced, signed as its manifest will be,
// in backups/NAME/partial.json; the next backup into the folder reuses
// those chunks as it reuses a finished backup's, and at most the last
// interval's work is done again (a first backup of a large volume onto
// a USB disk takes an hour). The interrupted backup's folder goes once
// the new one is whole; `prune` removes it too. An unfinished backup
// without a checkpoint (cut short in its first interval) is removed by
// Abort, as before.
const (
	partialFile     = "partial.json"
	checkpointEvery = 30 * time.Second
	// partialContext keeps a checkpoint's signature from passing for a
	// manifest's.
	partialContext = "ssbuild backup checkpoint v1\x00"
)

// checkpointFile is partial.json: the signed list, and its signature.
type checkpointFile struct {
	List      json.RawMessage `json:"list"`
	Signature string          `json:"signature"` // Ed25519 of partialContext + List, base64
}

type checkpointList struct {
	Format int     `json:"format"`
	Backup string  `json:"backup"`
	Signer string  `json:"signer"`
	Chunks []Chunk `json:"chunks"`
}

// checkpoints runs in the background while the backup is written.
type checkpoints struct {
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	written int // chunks listed by the last checkpoint
}

func (w *Writer) startCheckpoints(every time.Duration) {
	cp := &checkpoints{stop: make(chan struct{}), done: make(chan struct{})}
	w.cp = cp
	go func() {
		defer close(cp.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-cp.stop:
				return
			case <-t.C:
				// A checkpoint that fails costs a re-run that work, no more;
				// the backup's own writes report a failing disk.
				_ = w.checkpoint()
			}
		}
	}()
}

// stopCheckpoints waits for a checkpoint under way; none starts after.
func (w *Writer) stopCheckpoints() {
	w.cp.once.Do(func() { close(w.cp.stop) })
	<-w.cp.done
}

// checkpoint lists every chunk this backup wrote so far, once they are on
// disk.
func (w *Writer) checkpoint() error {
	w.mu.Lock()
	chunks := slices.Clone(w.freshChunks)
	w.mu.Unlock()
	if len(chunks) == w.cp.written {
		return nil
	}
	if err := syncFolder(w.top); err != nil { // the chunks before the list that names them
		return err
	}
	list, err := json.Marshal(checkpointList{Format: format, Backup: w.name, Signer: w.keys.Signer(), Chunks: chunks})
	if err != nil {
		return err
	}
	sig := ed25519.Sign(w.keys.sign, append([]byte(partialContext), list...))
	b, err := json.Marshal(checkpointFile{List: list, Signature: base64.StdEncoding.EncodeToString(sig)})
	if err != nil {
		return err
	}
	dir := filepath.Join(w.top, backupsDir, w.name)
	tmp := filepath.Join(dir, partialFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := fsync(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, partialFile)); err != nil {
		return err
	}
	if err := fsync(dir); err != nil {
		return err
	}
	w.cp.written = len(chunks)
	return nil
}

// readCheckpoint reads an unfinished backup's checkpoint, if this key
// signed one.
func (w *Writer) readCheckpoint(name string) ([]Chunk, error) {
	b, err := os.ReadFile(filepath.Join(w.top, backupsDir, name, partialFile))
	if err != nil {
		return nil, err
	}
	var f checkpointFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", partialFile, err)
	}
	sig, err := base64.StdEncoding.DecodeString(f.Signature)
	if err != nil || !ed25519.Verify(w.keys.sign.Public().(ed25519.PublicKey), append([]byte(partialContext), f.List...), sig) {
		return nil, fmt.Errorf("%s: not signed by this deployment's key", partialFile)
	}
	var l checkpointList
	if err := json.Unmarshal(f.List, &l); err != nil {
		return nil, fmt.Errorf("%s: %w", partialFile, err)
	}
	if l.Format != format || l.Backup != name {
		return nil, errors.New(partialFile + ": of another format or backup")
	}
	return l.Chunks, nil
}

// Resumed names the interrupted backups whose chunks this one reuses.
func (w *Writer) Resumed() []string { return w.resumed }

// dropCheckpoint removes this backup's checkpoint: it is about to be
// whole, and verify takes nothing else in a backup's folder.
func (w *Writer) dropCheckpoint() error {
	dir := filepath.Join(w.top, backupsDir, w.name)
	for _, f := range []string{partialFile, partialFile + ".tmp"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
