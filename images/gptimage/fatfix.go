package gptimage

import (
	"io"
	"os"

	"github.com/sovereign-stack/ssbuild/internal/fatfix"
)

// FixFAT32 repairs the FAT32 go-diskfs wrote at offset start of img, size
// bytes long (see fatfix.Repair); call it after the disk is closed.
func FixFAT32(img string, start, size int64) error {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := fatfix.Repair(io.NewSectionReader(f, start, size), io.NewOffsetWriter(f, start), size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
