package installer

import (
	"io"

	"github.com/diskfs/go-diskfs/backend"
)

// coalescingStorage hands go-diskfs a writer that joins adjacent writes:
// WritePartitionContents (v1.9.4) writes 512 bytes at a time, one system
// call each, which made the payload copy the slowest step of a build.
// Reads go straight to the file; call flush before anything reads what
// was written, and after the last write.
type coalescingStorage struct {
	backend.Storage
	w *coalescingWriter
}

func (c coalescingStorage) Writable() (backend.WritableFile, error) { return c.w, nil }

func newCoalescingStorage(s backend.Storage) (coalescingStorage, error) {
	w, err := s.Writable()
	if err != nil {
		return coalescingStorage{}, err
	}
	return coalescingStorage{Storage: s, w: &coalescingWriter{WritableFile: w, buf: make([]byte, 0, 4<<20)}}, nil
}

type coalescingWriter struct {
	backend.WritableFile
	buf []byte
	off int64 // where buf goes
}

func (c *coalescingWriter) WriteAt(p []byte, off int64) (int, error) {
	if len(c.buf) > 0 && (off != c.off+int64(len(c.buf)) || len(c.buf)+len(p) > cap(c.buf)) {
		if err := c.flush(); err != nil {
			return 0, err
		}
	}
	if len(c.buf) == 0 {
		c.off = off
	}
	if len(p) > cap(c.buf) {
		return c.WritableFile.WriteAt(p, off)
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *coalescingWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	n, err := c.WritableFile.WriteAt(c.buf, c.off)
	if err == nil && n < len(c.buf) {
		err = io.ErrShortWrite
	}
	c.buf = c.buf[:0]
	return err
}
