package pgz

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand"
	"os/exec"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// Output is compressed on every core, so a machine with another
// core count, or the same machine under another load, must still write the
// same bytes: only the fixed block size may shape the output.
func TestSameBytesWithAnyConcurrency(t *testing.T) {
	// Several blocks and a short last one; text and incompressible data.
	r := rand.New(rand.NewSource(1))
	var in bytes.Buffer
	for i := 0; in.Len() < 5*BlockSize+12345; i++ {
		chunk := make([]byte, r.Intn(200<<10))
		if i%3 == 0 {
			r.Read(chunk)
		} else {
			for j := range chunk {
				chunk[j] = "etc/ssh/sshd_config\n"[j%20]
			}
		}
		in.Write(chunk)
	}
	compress := func(blocks, writeSize int) []byte {
		var out bytes.Buffer
		zw := NewWriterConcurrency(&out, blocks)
		for b := in.Bytes(); len(b) > 0; {
			n := min(writeSize, len(b))
			if _, err := zw.Write(b[:n]); err != nil {
				t.Fatal(err)
			}
			b = b[n:]
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	want := compress(1, 32<<10)
	for _, c := range []struct{ blocks, writeSize int }{{2, 4096}, {4, 1 << 20}, {16, 7777}, {3, 3 << 20}} {
		if got := compress(c.blocks, c.writeSize); !bytes.Equal(got, want) {
			t.Errorf("%d blocks at once, writes of %d bytes: %d bytes differing from %d with one block at once",
				c.blocks, c.writeSize, len(got), len(want))
		}
	}

	// One ordinary gzip member, as gzip(1) and Go's reader take it.
	zr, err := gzip.NewReader(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() { // Go reads a zero MTIME as no time
		t.Errorf("header name %q, time %v: want neither", zr.Name, zr.ModTime)
	}
	zr.Multistream(false)
	got, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(got, in.Bytes()) {
		t.Errorf("decompressed %d bytes (%v), want the %d written", len(got), err, in.Len())
	}
	if rest, _ := io.ReadAll(zr); len(rest) != 0 {
		t.Errorf("%d bytes after the first member", len(rest))
	}
	testenv.RequireTools(t, "gzip")
	cmd := exec.Command("gzip", "-dc")
	cmd.Stdin = bytes.NewReader(want)
	out, err := cmd.Output()
	if err != nil || !bytes.Equal(out, in.Bytes()) {
		t.Errorf("gzip -dc: %v, %d bytes, want the %d written", err, len(out), in.Len())
	}
}
