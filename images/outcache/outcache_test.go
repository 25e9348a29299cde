package outcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func write(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStoreRestoreVerifies(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	src := t.TempDir()
	key, err := Key("squashfs", map[string]string{"tree": "abc"})
	if err != nil {
		t.Fatal(err)
	}
	if other, _ := Key("squashfs", map[string]string{"tree": "abd"}); other == key {
		t.Fatal("different inputs, same key")
	}
	files, err := c.Store("squashfs", key, "inputs", map[string]int{"n": 7},
		write(t, filepath.Join(src, "a.img"), "alpha"), write(t, filepath.Join(src, "b.json"), "{}"))
	if err != nil || len(files) != 2 || files[0].Size != 5 {
		t.Fatalf("store: %+v %v", files, err)
	}

	dest := t.TempDir()
	var meta map[string]int
	ent, ok, err := c.Restore(key, dest, &meta)
	if !ok || err != nil || meta["n"] != 7 || len(ent.Files) != 2 {
		t.Fatalf("restore: %v %v %+v %v", ok, err, ent, meta)
	}
	if data, _ := os.ReadFile(filepath.Join(dest, "a.img")); string(data) != "alpha" {
		t.Errorf("restored %q", data)
	}

	// One byte changed in the cache: refused, the entry removed, nothing
	// left in the destination.
	write(t, filepath.Join(c.Dir, key, "files", "b.json"), "{!")
	dest = t.TempDir()
	_, ok, err = c.Restore(key, dest, nil)
	var ce *CorruptError
	if ok || !errors.As(err, &ce) {
		t.Fatalf("corrupt entry: ok %v, err %v", ok, err)
	}
	if left, _ := os.ReadDir(dest); len(left) != 0 {
		t.Errorf("left in the destination: %v", left)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("corrupt entry still in the cache: %v", err)
	}
	// Now a plain miss.
	if _, ok, err := c.Restore(key, dest, nil); ok || err != nil {
		t.Errorf("after removal: %v %v", ok, err)
	}
}

func TestZeroCacheHoldsNothing(t *testing.T) {
	var c Cache
	p := write(t, filepath.Join(t.TempDir(), "f"), "abc")
	files, err := c.Store("k", "0123456789abcdef", nil, nil, p)
	if err != nil || files[0].SHA256 != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("%+v %v", files, err)
	}
	if _, ok, err := c.Restore("0123456789abcdef", t.TempDir(), nil); ok || err != nil {
		t.Errorf("zero cache restored: %v %v", ok, err)
	}
}

func TestPruneKeepsTheLastUsed(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	p := write(t, filepath.Join(t.TempDir(), "f"), "x")
	var keys []string
	for i := range 4 {
		k, _ := Key("disk", i)
		if _, err := c.Store("disk", k, i, nil, p); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(filepath.Join(c.Dir, k, "entry.json"), old, old)
		keys = append(keys, k)
	}
	// Using the oldest makes it the newest.
	if _, ok, err := c.Restore(keys[0], t.TempDir(), nil); !ok || err != nil {
		t.Fatal(ok, err)
	}
	removed, err := c.Prune(2)
	if err != nil || len(removed) != 2 {
		t.Fatalf("removed %v, %v", removed, err)
	}
	for i, want := range []bool{true, false, false, true} {
		_, err := os.Stat(filepath.Join(c.Dir, keys[i]))
		if (err == nil) != want {
			t.Errorf("entry %d kept: %v, want %v", i, err == nil, want)
		}
	}
}

func TestInputDigest(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	dir := t.TempDir()
	f := write(t, filepath.Join(dir, "snapshot.dat"), "utxo")
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	write(t, filepath.Join(dir, "sub", "blk.dat"), "blocks")
	os.Symlink("blk.dat", filepath.Join(dir, "sub", "link"))

	d1, err := c.InputDigest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := c.InputDigest(dir); again != d1 {
		t.Errorf("same tree, digests %s and %s", d1, again)
	}
	// Same size and a restored mtime: the changed ctime still tells.
	info, _ := os.Stat(f)
	write(t, f, "UTXO")
	os.Chtimes(f, info.ModTime(), info.ModTime())
	d2, _ := c.InputDigest(dir)
	if d2 == d1 {
		t.Error("changed content, same digest")
	}
	os.Chmod(f, 0o600)
	if d3, _ := c.InputDigest(dir); d3 == d2 {
		t.Error("changed mode, same digest")
	}
	single, err := c.InputDigest(f)
	want := sha256.Sum256([]byte("UTXO"))
	if err != nil || single != hex.EncodeToString(want[:]) {
		t.Errorf("file digest %q %v", single, err)
	}
}

// A restored file is sparse exactly when the stored one was (mksquashfs,
// for one, packs a sparse file differently from a dense one of the same
// bytes), with the same bytes.
func TestRestoreKeepsSparseness(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	src := t.TempDir()
	sparse, dense := filepath.Join(src, "sparse.img"), filepath.Join(src, "dense.img")
	content := make([]byte, 3<<20) // zeros but for a block in the middle
	copy(content[1<<20:], "data")
	for _, p := range []string{sparse, dense} {
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Holes where the zeros are, in the sparse one only.
	f, err := os.OpenFile(sparse, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 1 << 20}, {2 << 20, 1 << 20}} {
		if err := syscall.Fallocate(int(f.Fd()), 0x01|0x02, r[0], r[1]); err != nil { // KEEP_SIZE|PUNCH_HOLE
			t.Skipf("no hole punching here: %v", err)
		}
	}
	f.Close()
	isSparse := func(p string) bool {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return info.Sys().(*syscall.Stat_t).Blocks*512 < info.Size()
	}
	if !isSparse(sparse) || isSparse(dense) {
		t.Fatalf("set-up: sparse %v, dense %v", isSparse(sparse), isSparse(dense))
	}
	key, _ := Key("disk", "sparseness")
	if _, err := c.Store("disk", key, nil, nil, sparse, dense); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	if _, ok, err := c.Restore(key, dest, nil); !ok || err != nil {
		t.Fatalf("restore: %v %v", ok, err)
	}
	for name, want := range map[string]bool{"sparse.img": true, "dense.img": false} {
		p := filepath.Join(dest, name)
		if got := isSparse(p); got != want {
			t.Errorf("restored %s: sparse %v, want %v", name, got, want)
		}
		if b, _ := os.ReadFile(p); !bytes.Equal(b, content) {
			t.Errorf("restored %s: bytes differ", name)
		}
	}
}
