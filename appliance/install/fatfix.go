package install

import (
	"encoding/binary"
	"fmt"
	"io"
)

// fixFAT32 corrects two things go-diskfs v1.9.4's FAT32 writer gets wrong
// and fsck.fat reports: the ".." entry of a directory in the root must
// point to cluster 0 (it points to the root cluster), and the FSInfo free
// cluster count and next-free hint are left unset. fs is the ESP's byte
// range.
func fixFAT32(fs io.ReaderAt, w io.WriterAt) error {
	bpb := make([]byte, 512)
	if _, err := fs.ReadAt(bpb, 0); err != nil {
		return fmt.Errorf("FAT32 boot sector: %w", err)
	}
	le16 := func(off int) int64 { return int64(binary.LittleEndian.Uint16(bpb[off:])) }
	le32 := func(off int) int64 { return int64(binary.LittleEndian.Uint32(bpb[off:])) }
	bytesPerSector, sectorsPerCluster := le16(11), int64(bpb[13])
	reserved, fats := le16(14), int64(bpb[16])
	totalSectors, fatSectors := le32(32), le32(36)
	rootCluster, fsInfoSector := le32(44), le16(48)
	if bytesPerSector == 0 || sectorsPerCluster == 0 || fatSectors == 0 || string(bpb[82:87]) != "FAT32" {
		return fmt.Errorf("FAT32 boot sector: not a FAT32 filesystem")
	}
	clusterSize := bytesPerSector * sectorsPerCluster
	fatStart := reserved * bytesPerSector
	dataStart := (reserved + fats*fatSectors) * bytesPerSector
	clusters := (totalSectors - reserved - fats*fatSectors) / sectorsPerCluster
	clusterOffset := func(c int64) int64 { return dataStart + (c-2)*clusterSize }

	fat := make([]byte, fatSectors*bytesPerSector)
	if _, err := fs.ReadAt(fat, fatStart); err != nil {
		return fmt.Errorf("FAT: %w", err)
	}
	entry := func(c int64) int64 { return int64(binary.LittleEndian.Uint32(fat[c*4:]) & 0x0fffffff) }

	// Root directory, following its cluster chain.
	for c := rootCluster; c >= 2 && c < 0x0ffffff8; c = entry(c) {
		dir := make([]byte, clusterSize)
		if _, err := fs.ReadAt(dir, clusterOffset(c)); err != nil {
			return fmt.Errorf("root directory: %w", err)
		}
		for off := 0; off+32 <= len(dir); off += 32 {
			e := dir[off : off+32]
			if e[0] == 0 {
				break
			}
			if e[0] == 0xe5 || e[11] == 0x0f || e[11]&0x10 == 0 || e[0] == '.' {
				continue // deleted, long-name part, not a directory, dot entry
			}
			sub := int64(binary.LittleEndian.Uint16(e[20:]))<<16 | int64(binary.LittleEndian.Uint16(e[26:]))
			dotdot := make([]byte, 32)
			at := clusterOffset(sub) + 32
			if _, err := fs.ReadAt(dotdot, at); err != nil {
				return fmt.Errorf("directory at cluster %d: %w", sub, err)
			}
			if string(dotdot[:2]) != ".." {
				continue
			}
			binary.LittleEndian.PutUint16(dotdot[20:], 0)
			binary.LittleEndian.PutUint16(dotdot[26:], 0)
			if _, err := w.WriteAt(dotdot, at); err != nil {
				return fmt.Errorf("directory at cluster %d: %w", sub, err)
			}
		}
	}

	free, next := uint32(0), uint32(0xffffffff)
	for c := int64(2); c < clusters+2; c++ {
		if entry(c) == 0 {
			free++
			if next == 0xffffffff {
				next = uint32(c)
			}
		}
	}
	info := make([]byte, 8)
	binary.LittleEndian.PutUint32(info[0:], free)
	binary.LittleEndian.PutUint32(info[4:], next)
	if _, err := w.WriteAt(info, fsInfoSector*bytesPerSector+488); err != nil {
		return fmt.Errorf("FSInfo: %w", err)
	}
	return nil
}
