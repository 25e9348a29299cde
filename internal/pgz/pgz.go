// Package pgz writes gzip on every core (klauspost/pgzip) with output that
// depends only on the input: the same bytes on any machine, whatever its
// core count or load (the LXD image tarballs, the installer initramfs).
package pgz

import (
	"io"
	"runtime"
	"time"

	"github.com/klauspost/pgzip"
)

// BlockSize is the input each of pgzip's parallel deflate streams takes
// (each primed with the previous block's last 32 KiB). The output depends
// on it, and not on how many blocks are compressed at once, so it is fixed
// here and the concurrency follows the machine.
const BlockSize = 1 << 20

// NewWriter returns a gzip writer that compresses on every core, whose
// header carries no name and no time, so equal input gives equal bytes on
// any machine (TestSameBytesWithAnyConcurrency). pgzip writes one ordinary
// gzip member: gzip, tar, LXD and the kernel read it as any other.
func NewWriter(w io.Writer) *pgzip.Writer {
	return NewWriterConcurrency(w, runtime.GOMAXPROCS(0))
}

// NewWriterConcurrency is NewWriter compressing blocks at once.
func NewWriterConcurrency(w io.Writer, blocks int) *pgzip.Writer {
	zw, _ := pgzip.NewWriterLevel(w, pgzip.DefaultCompression) // a valid level: no error
	// Twice the cores in flight: one block being written out while every
	// core compresses another.
	if err := zw.SetConcurrency(BlockSize, 2*blocks); err != nil {
		panic(err) // constant arguments, checked by the tests
	}
	zw.ModTime = time.Unix(0, 0) // "no time"; the zero time.Time would wrap
	return zw
}
