package install

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// probeSize is how much of a disk's start Probe reads: enough for the ZFS
// uberblock ring of the first vdev label (128-256 KiB).
const probeSize = 256 << 10

// Probe reads the start of a disk (or partition) and names the partition
// tables and filesystem signatures it finds there, at the offsets blkid
// uses. An all-zero disk gives nothing.
func Probe(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", path, err)
	}
	defer f.Close()
	buf := make([]byte, probeSize)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("probe %s: %w", path, err)
	}
	return Signatures(buf[:n]), nil
}

// Signatures names what the first bytes of a disk hold.
func Signatures(b []byte) []string {
	var found []string
	at := func(off int, magic string) bool {
		return len(b) >= off+len(magic) && string(b[off:off+len(magic)]) == magic
	}
	// GPT header at LBA 1 for 512-byte or 4096-byte sectors.
	if at(512, "EFI PART") || at(4096, "EFI PART") {
		found = append(found, "GPT")
	}
	isFAT := at(82, "FAT32   ") || at(54, "FAT16   ") || at(54, "FAT12   ")
	if isFAT {
		found = append(found, "vfat")
	} else if at(510, "\x55\xaa") && !allZero(b[446:510]) {
		// A boot signature with partition entries: an MBR (also the
		// protective MBR in front of a GPT).
		found = append(found, "MBR")
	}
	if len(b) >= 1082 && binary.LittleEndian.Uint16(b[1080:]) == 0xEF53 {
		found = append(found, "ext4")
	}
	for s := 0; s < 4; s++ { // LVM2's label is in one of the first four sectors
		if at(s*512, "LABELONE") && at(s*512+24, "LVM2 001") {
			found = append(found, "LVM2_member")
			break
		}
	}
	if hasZFSUberblock(b) {
		found = append(found, "zfs_member")
	}
	return found
}

// hasZFSUberblock looks for the uberblock magic 0x00bab10c (either byte
// order) in the uberblock ring of vdev label 0, at 128 KiB, 1 KiB apart.
func hasZFSUberblock(b []byte) bool {
	le := []byte{0x0c, 0xb1, 0xba, 0x00, 0x00, 0x00, 0x00, 0x00}
	be := []byte{0x00, 0x00, 0x00, 0x00, 0x00, 0xba, 0xb1, 0x0c}
	for off := 128 << 10; off+8 <= len(b) && off < 256<<10; off += 1 << 10 {
		if bytes.Equal(b[off:off+8], le) || bytes.Equal(b[off:off+8], be) {
			return true
		}
	}
	return false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
