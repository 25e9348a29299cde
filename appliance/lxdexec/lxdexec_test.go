package lxdexec

import (
	"bytes"
	"fmt"
	"testing"
)

// TestTailWriter: whatever the sizes of the writes, the writer holds the
// last max bytes of what was written, and never more than max.
func TestTailWriter(t *testing.T) {
	var all bytes.Buffer
	for i := range 3000 {
		fmt.Fprintf(&all, "tar: ./file-%04d: Cannot open: Permission denied\n", i)
	}
	for _, size := range []int{1, 7, 100, 2047, 2048, 2049, 5000, all.Len()} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			w := &tailWriter{max: 2048}
			peak := 0
			for p := all.Bytes(); len(p) > 0; {
				k := min(size, len(p))
				if n, err := w.Write(p[:k]); n != k || err != nil {
					t.Fatalf("Write of %d bytes: %d, %v", k, n, err)
				}
				p = p[k:]
				peak = max(peak, len(w.b))
			}
			want := all.Bytes()[all.Len()-2048:]
			if !bytes.Equal(w.b, want) {
				t.Errorf("kept %q...\nwant %q...", w.b[:60], want[:60])
			}
			if peak > 2048 {
				t.Errorf("held %d bytes at once, want at most 2048", peak)
			}
		})
	}
	w := &tailWriter{max: 2048}
	w.Write([]byte("tar: short\n"))
	if got := string(w.b); got != "tar: short\n" {
		t.Errorf("a short stderr is kept whole: got %q", got)
	}
}
