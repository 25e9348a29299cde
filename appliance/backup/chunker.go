package backup

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// Content-defined chunking (gear hash with FastCDC's normalised cut, Xia
// et al., USENIX ATC 2016, and its 2020 version's two bytes a step): a cut
// falls where the hash of the last 64 bytes has its top bits clear, so an
// insertion moves only the chunks around it, and a changed row in a dump
// or a file in a volume's tar stream costs a chunk or two, not the rest of
// the stream (fixed-size chunks would all shift). The gear table comes
// from the deployment's key. Since format 3 the hash is checked every
// second byte (the same hash, a third less CPU in the one goroutine that
// cuts) and chunks are 2 MiB on average, not 1: each chunk is a file with
// its own age header (an X25519 exchange) and its creation costs more
// than its bytes on a slow disk.
const (
	minChunk = 512 << 10
	avgChunk = 2 << 20
	maxChunk = 8 << 20
	// Harder before the average size, easier after: sizes bunch around it.
	// A check every second byte halves the odds per byte: 22 bits is 1 in
	// 8 Mi bytes, 18 bits 1 in 512 Ki.
	maskHard = uint64(1<<22-1) << (64 - 22)
	maskEasy = uint64(1<<18-1) << (64 - 18)
)

type chunker struct {
	r          io.Reader
	gear       *[256]uint64
	cur        *chunkBuffer // cur.b[start:end] is read and not cut yet
	start, end int
	err        error // from r, once it failed or ended
}

func newChunker(r io.Reader, gear *[256]uint64) *chunker {
	return &chunker{r: r, gear: gear}
}

// chunkBufSize is the size of the buffers chunks are cut from: chunks are
// slices of them, handed on without a copy; a buffer is never written
// again while it holds a chunk (the rest moves to a new one).
const chunkBufSize = 4 * maxChunk

// A chunkBuffer goes back to the pool when the chunker has moved on from
// it and every chunk cut from it is released: a new 32 MiB buffer every
// 24 MiB read cost page faults and zeroing (about 7% of a full backup's
// CPU).
type chunkBuffer struct {
	b    []byte
	refs atomic.Int32 // the chunker's, and one per chunk not released
}

var chunkBuffers = sync.Pool{New: func() any { return &chunkBuffer{b: make([]byte, chunkBufSize)} }}

func (cb *chunkBuffer) release() {
	if cb.refs.Add(-1) == 0 {
		chunkBuffers.Put(cb)
	}
}

// next returns the next chunk and the func that releases it (call it when
// done with its bytes); io.EOF after the last.
func (c *chunker) next() ([]byte, func(), error) {
	for c.end-c.start < maxChunk && c.err == nil {
		if c.cur == nil || len(c.cur.b)-c.end < 64<<10 { // little room left: the rest goes to a new buffer
			nb := chunkBuffers.Get().(*chunkBuffer)
			nb.refs.Store(1)
			if c.cur != nil {
				c.end = copy(nb.b, c.cur.b[c.start:c.end])
				c.cur.release()
			}
			c.cur, c.start = nb, 0
		}
		n, err := c.r.Read(c.cur.b[c.end:])
		c.end += n
		if err != nil {
			c.err = err
		}
	}
	if c.start == c.end {
		if c.err == nil || errors.Is(c.err, io.EOF) {
			return nil, nil, io.EOF
		}
		return nil, nil, c.err
	}
	if c.err != nil && !errors.Is(c.err, io.EOF) {
		return nil, nil, c.err
	}
	n := cut(c.cur.b[c.start:c.end], c.gear)
	chunk := c.cur.b[c.start : c.start+n : c.start+n]
	c.start += n
	c.cur.refs.Add(1)
	return chunk, c.cur.release, nil
}

// reset makes the chunker cut r next, from where the last reader ended
// (every byte of it was cut), in the same buffer.
func (c *chunker) reset(r io.Reader) {
	c.r, c.err = r, nil
}

// close drops the chunker's hold on its buffer.
func (c *chunker) close() {
	if c.cur != nil {
		c.cur.release()
		c.cur = nil
	}
}

// cut is the length of the chunk that starts p.
func cut(p []byte, gear *[256]uint64) int {
	n := len(p)
	if n <= minChunk {
		return n
	}
	n = min(n, maxChunk)
	p = p[:n]
	normal := min(avgChunk, n)
	var h uint64
	for _, b := range p[minChunk-64 : minChunk] { // the hash covers 64 bytes: warm it up before the first cut may fall
		h = h<<1 + gear[b]
	}
	// Two bytes a step: the hash after both, checked once.
	i := minChunk
	for ; i+1 < normal; i += 2 {
		h = h<<2 + gear[p[i]]<<1 + gear[p[i+1]]
		if h&maskHard == 0 {
			return i + 2
		}
	}
	for ; i+1 < n; i += 2 {
		h = h<<2 + gear[p[i]]<<1 + gear[p[i+1]]
		if h&maskEasy == 0 {
			return i + 2
		}
	}
	return n
}
