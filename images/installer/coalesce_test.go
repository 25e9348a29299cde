package installer

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// The coalesced file must hold what plain WriteAt calls would have
// written, for adjacent, gapped, overlapping and oversized writes.
func TestCoalescingWriterWritesWhatItWasGiven(t *testing.T) {
	dir := t.TempDir()
	plain, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	joined, err := os.Create(filepath.Join(dir, "joined"))
	if err != nil {
		t.Fatal(err)
	}
	defer joined.Close()
	c := &coalescingWriter{WritableFile: joined, buf: make([]byte, 0, 4096)}

	r := rand.New(rand.NewSource(1))
	off := int64(0)
	for i := 0; i < 2000; i++ {
		n := 512
		switch i % 50 {
		case 7:
			off += 10000 // a gap
		case 13:
			off -= 300 // overwrite the tail of earlier writes
		case 29:
			n = 9000 // larger than the buffer
		}
		p := make([]byte, n)
		r.Read(p)
		if _, err := plain.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if got, err := c.WriteAt(p, off); err != nil || got != n {
			t.Fatalf("WriteAt: %d, %v", got, err)
		}
		off += int64(n)
	}
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(plain.Name())
	b, _ := os.ReadFile(joined.Name())
	if !bytes.Equal(a, b) {
		t.Errorf("coalesced writes differ from plain ones (%d vs %d bytes)", len(b), len(a))
	}
}

// go-diskfs reads back directory entries it has just written: a read must
// see every write before it.
func TestCoalescingWriterReadsWhatItWrote(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &coalescingWriter{WritableFile: f, buf: make([]byte, 0, 4096)}
	for i := 0; i < 4; i++ {
		if _, err := c.WriteAt(bytes.Repeat([]byte{byte('a' + i)}, 512), int64(i*512)); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 4)
	for i := 0; i < 4; i++ {
		if _, err := c.ReadAt(got[i:i+1], int64(i*512+100)); err != nil {
			t.Fatal(err)
		}
	}
	if string(got) != "abcd" {
		t.Errorf("read back %q, want %q", got, "abcd")
	}
}
