package install

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// probeSize is how much of a disk's start and of its end Probe reads:
// every signature it knows lies there (the furthest in, btrfs at 64 KiB and
// the ZFS labels' uberblocks at 128-256 KiB; md 0.90/1.0 and the backup
// GPT and ZFS labels at the end), and a disk with any byte set in either
// is taken to hold data whatever it is.
const probeSize = 1 << 20

// Probe reads the first and last MiB of a disk (or partition) and names the
// partition tables and filesystem, volume and RAID signatures it finds
// there, at the offsets blkid uses, with blkid's names ("GPT" and "MBR"
// for partition tables). Bytes it cannot name give "data". An all-zero
// disk gives nothing. The installer initramfs has no blkid or wipefs, so
// this is the installer's only look at a disk; the tests check it against
// both on disks the real tools made.
func Probe(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd) // a block device's size too
	if err != nil {
		return nil, fmt.Errorf("probe %s: size: %w", path, err)
	}
	n := min(size, probeSize)
	head := make([]byte, n)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, fmt.Errorf("probe %s: read the first %d bytes: %w", path, n, err)
	}
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return nil, fmt.Errorf("probe %s: read the last %d bytes: %w", path, n, err)
	}
	return Signatures(head, tail, size), nil
}

// Signatures names what a disk of size bytes holds, given its first bytes
// (head) and its last (tail, ending at size).
func Signatures(head, tail []byte, size int64) []string {
	var found []string
	add := func(s string) { found = append(found, s) }
	at := func(off int, magic string) bool {
		return off >= 0 && len(head) >= off+len(magic) && string(head[off:off+len(magic)]) == magic
	}
	// tailOff turns an offset from the disk's start into one in tail
	// (negative when tail does not hold it).
	tailOff := func(off int64) int { return int(off - (size - int64(len(tail)))) }
	atEnd := func(off int64, magic string) bool {
		o := tailOff(off)
		return off >= 0 && o >= 0 && len(tail) >= o+len(magic) && string(tail[o:o+len(magic)]) == magic
	}

	// Partition tables: GPT header at LBA 1, or its backup at the last LBA,
	// for 512-byte or 4096-byte sectors.
	if at(512, "EFI PART") || at(4096, "EFI PART") || atEnd(size-512, "EFI PART") || atEnd(size-4096, "EFI PART") {
		add("GPT")
	}
	// Boot-sector filesystems. blkid and wipefs take a FAT boot sector for
	// the filesystem alone, but also list the 55 AA of an NTFS or exFAT
	// one as an MBR.
	isFAT := at(82, "FAT32   ") || at(54, "FAT16   ") || at(54, "FAT12   ")
	switch {
	case at(3, "NTFS    "):
		add("ntfs")
	case at(3, "EXFAT   "):
		add("exfat")
	case isFAT:
		add("vfat")
	}
	if !isFAT && at(510, "\x55\xaa") {
		// A boot signature outside a FAT boot sector: an MBR (also the
		// protective MBR in front of a GPT), as wipefs lists it.
		add("MBR")
	}

	// Whole-device superblocks.
	switch {
	case at(0, "LUKS\xba\xbe") || luks2Secondary(at):
		add("crypto_LUKS")
	case at(0, "XFSB"):
		add("xfs")
	case at(0, "hsqs") || at(0, "sqsh"):
		add("squashfs")
	case at(0, "bluestore block device"):
		add("ceph_bluestore")
	}
	if len(head) >= 1082 && binary.LittleEndian.Uint16(head[1080:]) == 0xEF53 {
		add(extVersion(head[1024:]))
	}
	if at(0x10040, "_BHRfS_M") {
		add("btrfs")
	}
	if at(0x8001, "CD001") {
		add("iso9660")
	}
	if at(0x1018, "\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81") {
		add("bcache")
	}
	if s := swapSignature(at); s != "" {
		add(s)
	}
	for s := 0; s < 4; s++ { // LVM2's label is in one of the first four sectors
		if at(s*512, "LABELONE") && at(s*512+24, "LVM2 001") {
			add("LVM2_member")
			break
		}
	}
	if mdSuperblock(head, tail, size, tailOff) {
		add("linux_raid_member")
	}
	if hasZFSUberblock(head, 0) || zfsAtEnd(tail, size, tailOff) {
		add("zfs_member")
	}
	if len(found) == 0 && (!allZero(head) || !allZero(tail)) {
		add("data")
	}
	return found
}

// luks2Secondary finds the secondary LUKS2 header (its magic is "SKUL"),
// which cryptsetup places at one of these offsets; it survives a wipe of
// the first sectors only.
func luks2Secondary(at func(int, string) bool) bool {
	for _, off := range []int{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000} {
		if at(off, "SKUL\xba\xbe") {
			return true
		}
	}
	return false
}

// extVersion names an ext2/3/4 superblock (sb: from byte 1024) as blkid
// does, by its feature flags: a journal makes ext3, features past ext3's
// make ext4, an external journal device is jbd.
func extVersion(sb []byte) string {
	const (
		compatJournal     = 0x0004
		incompatJournalDv = 0x0008
		ext2Incompat      = 0x0002 | 0x0010          // filetype, meta_bg
		ext3Incompat      = 0x0002 | 0x0004 | 0x0010 // filetype, recover, meta_bg
		ext23RoCompat     = 0x0001 | 0x0002 | 0x0004 // sparse_super, large_file, btree_dir
	)
	compat := binary.LittleEndian.Uint32(sb[0x5c:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	journal := compat&compatJournal != 0
	switch {
	case incompat&incompatJournalDv != 0:
		return "jbd"
	case !journal && incompat&^ext2Incompat == 0 && roCompat&^ext23RoCompat == 0:
		return "ext2"
	case journal && incompat&^ext3Incompat == 0 && roCompat&^ext23RoCompat == 0:
		return "ext3"
	}
	return "ext4"
}

// swapSignature finds a swap area's or a hibernation image's signature in
// the last bytes of its first page, for the page sizes blkid tries.
func swapSignature(at func(int, string) bool) string {
	for _, page := range []int{4096, 8192, 16384, 32768, 65536} {
		for _, m := range []string{"SWAPSPACE2", "SWAP-SPACE"} {
			if at(page-len(m), m) {
				return "swap"
			}
		}
		for _, m := range []string{"S1SUSPEND", "S2SUSPEND", "ULSUSPEND", "LINHIB0001", "\xed\xc3\x02\xe9\x98\x56\xe5\x0c"} {
			if at(page-10, m) {
				return "swsuspend"
			}
		}
	}
	return ""
}

// mdMagic is the md superblock magic 0xa92b4efc, little-endian (metadata
// 1.x always; 0.90 in the host's order, which is little-endian on x86).
const mdMagic = "\xfc\x4e\x2b\xa9"

// mdSuperblock finds a Linux md RAID member's superblock: metadata 1.1 at
// the start, 1.2 at 4 KiB, 1.0 8-12 KiB before the end, 0.90 in the last
// 64 KiB-aligned 64 KiB (either byte order).
func mdSuperblock(head, tail []byte, size int64, tailOff func(int64) int) bool {
	v1 := func(b []byte, off int) bool {
		return off >= 0 && len(b) >= off+8 && string(b[off:off+4]) == mdMagic && binary.LittleEndian.Uint32(b[off+4:]) == 1
	}
	if v1(head, 0) || v1(head, 4096) {
		return true
	}
	if size < 128<<10 {
		return false
	}
	if v1(tail, tailOff((size/512-16)&^7*512)) {
		return true
	}
	o := tailOff(size&^(64<<10-1) - 64<<10)
	return o >= 0 && len(tail) >= o+4 && (string(tail[o:o+4]) == mdMagic || string(tail[o:o+4]) == "\xa9\x2b\x4e\xfc")
}

// hasZFSUberblock looks for the uberblock magic 0x00bab10c (either byte
// order) in the uberblock ring of the vdev label at off in b: from 128 KiB
// into the 256 KiB label, 1 KiB apart.
func hasZFSUberblock(b []byte, off int) bool {
	le := []byte{0x0c, 0xb1, 0xba, 0x00, 0x00, 0x00, 0x00, 0x00}
	be := []byte{0x00, 0x00, 0x00, 0x00, 0x00, 0xba, 0xb1, 0x0c}
	if off < 0 {
		return false
	}
	for o := off + 128<<10; o+8 <= len(b) && o < off+256<<10; o += 1 << 10 {
		if bytes.Equal(b[o:o+8], le) || bytes.Equal(b[o:o+8], be) {
			return true
		}
	}
	return false
}

// zfsAtEnd looks in labels 2 and 3, the last two 256 KiB of the device
// rounded down to 256 KiB.
func zfsAtEnd(tail []byte, size int64, tailOff func(int64) int) bool {
	end := size &^ (256<<10 - 1)
	return end >= 512<<10 && (hasZFSUberblock(tail, tailOff(end-512<<10)) || hasZFSUberblock(tail, tailOff(end-256<<10)))
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
