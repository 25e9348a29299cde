package backup

import (
	"bufio"
	"errors"
	"io"
)

// Content-defined chunking (gear hash with FastCDC's normalised cut, Xia
// et al., USENIX ATC 2016): a cut falls where the hash of the last 64
// bytes has its top bits clear, so an insertion moves only the chunks
// around it, and a changed row in a dump or a file in a volume's tar
// stream costs a chunk or two, not the rest of the stream (fixed-size
// chunks would all shift). The gear table comes from the deployment's key.
const (
	minChunk = 256 << 10
	avgChunk = 1 << 20
	maxChunk = 4 << 20
	// Harder before the average size, easier after: sizes bunch around it.
	maskHard = uint64(1<<22-1) << (64 - 22)
	maskEasy = uint64(1<<18-1) << (64 - 18)
)

type chunker struct {
	r    *bufio.Reader
	gear *[256]uint64
}

func newChunker(r io.Reader, gear *[256]uint64) *chunker {
	return &chunker{r: bufio.NewReaderSize(r, maxChunk), gear: gear}
}

// next returns the next chunk, a new slice; io.EOF after the last.
func (c *chunker) next() ([]byte, error) {
	p, err := c.r.Peek(maxChunk)
	if len(p) == 0 {
		if err == nil || errors.Is(err, bufio.ErrBufferFull) {
			err = io.ErrNoProgress
		}
		return nil, err
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	n := cut(p, c.gear)
	chunk := make([]byte, n)
	copy(chunk, p[:n])
	_, err = c.r.Discard(n)
	return chunk, err
}

// cut is the length of the chunk that starts p.
func cut(p []byte, gear *[256]uint64) int {
	n := len(p)
	if n <= minChunk {
		return n
	}
	if n > maxChunk {
		n = maxChunk
	}
	normal := min(avgChunk, n)
	var h uint64
	i := minChunk - 64 // the hash covers 64 bytes: warm it up before the first cut may fall
	for ; i < minChunk; i++ {
		h = h<<1 + gear[p[i]]
	}
	for ; i < normal; i++ {
		h = h<<1 + gear[p[i]]
		if h&maskHard == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = h<<1 + gear[p[i]]
		if h&maskEasy == 0 {
			return i + 1
		}
	}
	return n
}
