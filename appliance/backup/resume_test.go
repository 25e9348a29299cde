package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
)

// stallingReader gives data up to at, then waits until ready says so and
// ends with err (nil: blocks for good).
type stallingReader struct {
	r     io.Reader
	left  int64
	ready func() bool
	err   error
}

func (s *stallingReader) Read(p []byte) (int, error) {
	if s.left <= 0 {
		for !s.ready() {
			time.Sleep(10 * time.Millisecond)
		}
		if s.err == nil {
			select {} // killed here
		}
		return 0, s.err
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= int64(n)
	return n, err
}

// checkpointed is the number of chunks the unfinished backup's
// checkpoint lists, as the next backup would read it (0: none or not
// trusted).
func checkpointed(t *testing.T, folder, name string, keys *Keys) int {
	w := &Writer{top: folder, keys: keys}
	chunks, err := w.readCheckpoint(name)
	if err != nil {
		return 0
	}
	return len(chunks)
}

const resumeSecret = "resume test deployment secret, 32 bytes or more"

// interrupt writes a backup of data into folder that fails after
// stopAt bytes, once its checkpoint lists at least one chunk; it returns
// the unfinished backup's name.
func interrupt(t *testing.T, folder string, keys *Keys, id *age.X25519Identity, data []byte, stopAt int64) string {
	w, err := newWriter(folder, Manifest{Deployment: "d", Project: "p", Created: t0}, keys, []age.Recipient{id.Recipient()}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	name := w.Name()
	r := &stallingReader{r: bytes.NewReader(data), left: stopAt, err: errors.New("the USB disk was pulled"),
		ready: func() bool { return checkpointed(t, folder, name, keys) > 0 }}
	err = w.AddReader(Item{File: "inst/svc/data.age", Kind: "dump", Instance: "inst", Service: "svc"}, r)
	if err == nil || !strings.Contains(err.Error(), "USB disk was pulled") {
		t.Fatalf("interrupted backup: %v", err)
	}
	w.Abort()
	return name
}

// resume backs data up again into folder and checks the backup is whole
// and holds data; it returns its manifest.
func resume(t *testing.T, folder string, keys *Keys, id *age.X25519Identity, data []byte) (Manifest, *Writer) {
	w, err := newWriter(folder, Manifest{Deployment: "d", Project: "p", Created: t0.Add(time.Hour)}, keys, []age.Recipient{id.Recipient()}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddReader(Item{File: "inst/svc/data.age", Kind: "dump", Instance: "inst", Service: "svc"}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyWith(filepath.Join(folder, backupsDir, m.Name), VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
		t.Errorf("the resumed backup: %v", err)
	}
	var out bytes.Buffer
	if err := Decrypt(folder, "inst/svc/data.age", []age.Identity{id}, &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Errorf("the resumed backup decrypts to %d bytes (%v), want the %d written", out.Len(), err, len(data))
	}
	return m, w
}

// A backup that failed after a checkpoint is kept; the next backup of the
// same data reuses every chunk the checkpoint lists, writes the rest,
// and removes the interrupted one once whole.
func TestResumeAfterFailure(t *testing.T) {
	keys, id := testKeys(t, resumeSecret), must(age.GenerateX25519Identity())
	data := noise(7, 24<<20)
	folder := filepath.Join(t.TempDir(), "backups")
	first := interrupt(t, folder, keys, id, data, 16<<20)
	listed := checkpointed(t, folder, first, keys)
	if _, err := VerifyWith(folder, VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "backups/"+first+": not a finished backup: it was cut short") {
		t.Errorf("verify of the folder with the interrupted backup: %v", err)
	}
	if l, _ := List(folder); len(l.Backups) != 1 || l.Backups[0].Finished || l.Backups[0].Err != "" {
		t.Errorf("list of the folder with the interrupted backup: %+v", l.Backups)
	}
	m, w := resume(t, folder, keys, id, data)
	t.Logf("checkpoint listed %d chunks; the resumed backup: %d chunks, %d new, %d resumed", listed, m.Stats.Chunks, m.Stats.New, m.Stats.Resumed)
	if m.Stats.Resumed != listed || m.Stats.New != m.Stats.Chunks-listed || len(w.Resumed()) != 1 || w.Resumed()[0] != first {
		t.Errorf("resumed backup: %d of %d chunks resumed, %d new, from %v; want the %d the checkpoint of %s lists resumed, the rest new", m.Stats.Resumed, m.Stats.Chunks, m.Stats.New, w.Resumed(), listed, first)
	}
	if _, err := os.Stat(filepath.Join(folder, backupsDir, first)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the interrupted backup's folder is still there once the new one is whole: %v", err)
	}
	if l, _ := List(folder); len(l.Backups) != 1 || !l.Backups[0].Finished || l.UnusedChunks != 0 {
		t.Errorf("list after the resumed backup: %+v, %d unused chunks", l.Backups, l.UnusedChunks)
	}
	if _, err := VerifyWith(folder, VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
		t.Errorf("the folder after the resumed backup: %v", err)
	}
}

// untrusted checks that a backup left the unfinished backup it did not
// trust alone, and that prune removes it.
func untrusted(t *testing.T, folder, name string) {
	if l, _ := List(folder); len(l.Backups) != 2 || l.Backups[0].Name != name || l.Backups[0].Finished {
		t.Errorf("list: %+v; want the untrusted unfinished %s left beside the new backup", l.Backups, name)
	}
	if r, err := Prune(folder, 1); err != nil || len(r.Removed) != 1 || r.Removed[0] != name {
		t.Errorf("prune: %+v, %v; want %s removed", r, err, name)
	}
}

// A checkpoint is trusted only as signed by the deployment's key and
// only for chunk files of the size it lists: a changed one resumes
// nothing, a truncated chunk file is written again.
func TestResumeTrustsOnlyWhatItSigned(t *testing.T) {
	keys, id := testKeys(t, resumeSecret), must(age.GenerateX25519Identity())
	data := noise(8, 24<<20)

	t.Run("changed checkpoint", func(t *testing.T) {
		folder := filepath.Join(t.TempDir(), "backups")
		first := interrupt(t, folder, keys, id, data, 16<<20)
		p := filepath.Join(folder, backupsDir, first, partialFile)
		var f checkpointFile
		b, _ := os.ReadFile(p)
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		f.List = bytes.Replace(f.List, []byte(`"size":`), []byte(`"size":1`), 1)
		b, _ = json.Marshal(f)
		os.WriteFile(p, b, 0o600)
		m, w := resume(t, folder, keys, id, data)
		if m.Stats.Resumed != 0 || m.Stats.Reused != 0 || len(w.Resumed()) != 0 {
			t.Errorf("after a changed checkpoint: %d chunks resumed, %d reused, from %v; want none", m.Stats.Resumed, m.Stats.Reused, w.Resumed())
		}
		untrusted(t, folder, first)
	})
	t.Run("another key's checkpoint", func(t *testing.T) {
		folder := filepath.Join(t.TempDir(), "backups")
		first := interrupt(t, folder, testKeys(t, "another deployment's secret, 32 bytes or more"), id, data, 16<<20)
		m, _ := resume(t, folder, keys, id, data)
		if m.Stats.Resumed != 0 || m.Stats.Reused != 0 {
			t.Errorf("after another key's checkpoint: %d chunks resumed, %d reused; want none", m.Stats.Resumed, m.Stats.Reused)
		}
		untrusted(t, folder, first)
	})
	t.Run("truncated chunk", func(t *testing.T) {
		folder := filepath.Join(t.TempDir(), "backups")
		first := interrupt(t, folder, keys, id, data, 16<<20)
		w := &Writer{top: folder, keys: keys}
		chunks, err := w.readCheckpoint(first)
		if err != nil || len(chunks) == 0 {
			t.Fatalf("checkpoint: %v, %d chunks", err, len(chunks))
		}
		os.Truncate(filepath.Join(folder, filepath.FromSlash(chunkPath(chunks[0].ID))), chunks[0].Size/2)
		m, _ := resume(t, folder, keys, id, data)
		if m.Stats.Resumed != len(chunks)-1 {
			t.Errorf("with one of the %d listed chunk files truncated: %d resumed; want the others", len(chunks), m.Stats.Resumed)
		}
	})
}

// A backup killed (SIGKILL: no Abort, no deferred code) after its first
// checkpoints is resumed by the next one. The backup runs in a child
// process, this test binary again.
func TestResumeAfterKill(t *testing.T) {
	keys := testKeys(t, resumeSecret)
	data := noise(9, 40<<20)
	if folder := os.Getenv("SSBUILD_TEST_KILLED_BACKUP"); folder != "" {
		recip, err := age.ParseX25519Recipient(os.Getenv("SSBUILD_TEST_KILLED_RECIPIENT"))
		if err != nil {
			t.Fatal(err)
		}
		w, err := newWriter(folder, Manifest{Deployment: "d", Project: "p", Created: t0}, keys, []age.Recipient{recip}, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		w.AddReader(Item{File: "inst/svc/data.age", Kind: "dump"}, &stallingReader{r: bytes.NewReader(data), left: 24 << 20, ready: func() bool { return true }})
		t.Fatal("the stalled backup ended")
	}
	id := must(age.GenerateX25519Identity())
	folder := filepath.Join(t.TempDir(), "backups")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestResumeAfterKill$")
	cmd.Env = append(os.Environ(), "SSBUILD_TEST_KILLED_BACKUP="+folder, "SSBUILD_TEST_KILLED_RECIPIENT="+id.Recipient().String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Killed once its checkpoint lists at least 4 chunks (8 MiB or so).
	var name string
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		names, _ := backupNames(folder)
		if len(names) == 1 && checkpointed(t, folder, names[0], keys) >= 4 {
			name = names[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of 4 chunks within 2 minutes; the child said:\n%s", out.String())
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	listed := checkpointed(t, folder, name, keys)
	m, w := resume(t, folder, keys, id, data)
	t.Logf("killed after a checkpoint of %d chunks; the resumed backup: %d chunks, %d new, %d resumed", listed, m.Stats.Chunks, m.Stats.New, m.Stats.Resumed)
	if m.Stats.Resumed != listed || len(w.Resumed()) != 1 {
		t.Errorf("after the kill: %d chunks resumed from %v, want the %d the checkpoint lists", m.Stats.Resumed, w.Resumed(), listed)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
