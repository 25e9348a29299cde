package installer

import (
	"io"

	"github.com/diskfs/go-diskfs/backend"
)

// coalescingStorage hands go-diskfs a writer that joins adjacent writes:
// its FAT32 (v1.9.4) writes a file one 512-byte cluster at a time, one
// system call each. Every read through it flushes first, so go-diskfs
// reads back what it wrote; call flush after the last write.
type coalescingStorage struct {
	backend.Storage
	w *coalescingWriter
}

func (c coalescingStorage) Writable() (backend.WritableFile, error) { return c.w, nil }

func (c coalescingStorage) ReadAt(p []byte, off int64) (int, error) {
	if err := c.w.flush(); err != nil {
		return 0, err
	}
	return c.Storage.ReadAt(p, off)
}

func (c coalescingStorage) Read(p []byte) (int, error) {
	if err := c.w.flush(); err != nil {
		return 0, err
	}
	return c.Storage.Read(p)
}

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

func (c *coalescingWriter) ReadAt(p []byte, off int64) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.WritableFile.ReadAt(p, off)
}

func (c *coalescingWriter) Read(p []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.WritableFile.Read(p)
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
