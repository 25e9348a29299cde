// Package gptimage holds what the builders of GPT disk images (the LXD VM
// disk, the USB installer) share to make them reproducible with go-diskfs:
// GUIDs derived from a seed, and FAT32 file systems whose timestamps come
// from a given epoch.
package gptimage

import (
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
)

// GUID derives a GUID from seed: the same seed gives the same GUID. It has
// the version 4 layout, random-looking as tools expect, in go-diskfs's
// upper-case form.
func GUID(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return strings.ToUpper(fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]))
}

// fatEpoch serialises FAT builds: go-diskfs takes FAT timestamps from the
// SOURCE_DATE_EPOCH environment variable only, which is per process.
var fatEpoch sync.Mutex

// WithEpoch runs fn with SOURCE_DATE_EPOCH set to epoch, so that every FAT
// timestamp go-diskfs writes meanwhile (directory entries made by Mkdir and
// OpenFile, the volume) is the epoch. Other goroutines building FAT file
// systems wait.
func WithEpoch(epoch int64, fn func() error) error {
	fatEpoch.Lock()
	defer fatEpoch.Unlock()
	old, had := os.LookupEnv("SOURCE_DATE_EPOCH")
	os.Setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(epoch, 10))
	defer func() {
		if had {
			os.Setenv("SOURCE_DATE_EPOCH", old)
		} else {
			os.Unsetenv("SOURCE_DATE_EPOCH")
		}
	}()
	return fn()
}

// FAT32 is the spec of a reproducible FAT32 (volume ID zero) for
// disk.CreateFilesystem; call that inside WithEpoch.
func FAT32(partition int, label string) disk.FilesystemSpec {
	return disk.FilesystemSpec{Partition: partition, FSType: filesystem.TypeFat32,
		VolumeLabel: label, Reproducible: true}
}

// CreateFAT32 formats partition as reproducible FAT32 (volume ID zero,
// timestamps the epoch). Files written later must be written inside
// WithEpoch too.
func CreateFAT32(d *disk.Disk, partition int, label string, epoch int64) (filesystem.FileSystem, error) {
	var fs filesystem.FileSystem
	err := WithEpoch(epoch, func() error {
		var err error
		fs, err = d.CreateFilesystem(FAT32(partition, label))
		return err
	})
	return fs, err
}
