package backup

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// The two CPU costs of an incremental backup's unchanged dump, which every
// backup makes whole: cutting it into chunks (one goroutine) and naming
// each chunk (a keyed BLAKE3, on every core). The cut bounds how fast an
// unchanged dump goes by.
func BenchmarkCut(b *testing.B) {
	keys := testKeys(b, "deployment secret")
	data := noise(1, 64<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		c := newChunker(bytes.NewReader(data), &keys.gear)
		for {
			_, release, err := c.next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			release()
		}
		c.close()
	}
}

// BenchmarkChunkName names one chunk of the average size.
func BenchmarkChunkName(b *testing.B) {
	keys := testKeys(b, "deployment secret")
	data := noise(1, 64<<20)[:avgChunk]
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		keys.chunkName(data)
	}
}
