// Package fatfix repairs what go-diskfs (v1.9.4) writes wrong in a FAT32, so
// that fsck.fat -n, which a user runs on an ESP, finds it clean. Both the
// image builds (images/gptimage) and the installer (appliance/install)
// write ESPs with go-diskfs and repair them here.
package fatfix

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Repair fixes, in the FAT32 whose bytes fs reads and w writes (offset 0 is
// its boot sector; size is its length):
//   - the ".." entry of a directory in the root, which go-diskfs points at
//     the root's cluster where FAT says 0;
//   - FSInfo's free cluster count and next-free hint, left "unknown", in
//     the FSInfo sector and its backup copy.
//
// It refuses a file system whose geometry or cluster chains do not add up,
// and works for every sector size FAT allows (512 to 4096 bytes).
func Repair(fs io.ReaderAt, w io.WriterAt, size int64) error {
	boot := make([]byte, 512)
	if _, err := fs.ReadAt(boot, 0); err != nil {
		return fmt.Errorf("FAT boot sector: %w", err)
	}
	le := binary.LittleEndian
	bps := int64(le.Uint16(boot[11:]))
	spc := int64(boot[13])
	reserved := int64(le.Uint16(boot[14:]))
	fats := int64(boot[16])
	total := int64(le.Uint32(boot[32:]))
	fatSectors := int64(le.Uint32(boot[36:]))
	root := le.Uint32(boot[44:])
	fsinfo := int64(le.Uint16(boot[48:]))
	backup := int64(le.Uint16(boot[50:]))
	if string(boot[82:87]) != "FAT32" {
		return fmt.Errorf("FAT boot sector: not a FAT32 file system")
	}
	if bps < 512 || bps > 4096 || bps&(bps-1) != 0 || spc == 0 || fats == 0 || fatSectors == 0 || total*bps > size {
		return fmt.Errorf("FAT boot sector: unexpected geometry (%d bytes per sector, %d per cluster, %d sectors, file system of %d bytes)",
			bps, spc, total, size)
	}
	clusters := (total - reserved - fats*fatSectors) / spc
	if entries := fatSectors * bps / 4; entries < clusters+2 {
		return fmt.Errorf("FAT has %d entries for %d clusters", entries, clusters)
	}
	fat := make([]byte, (clusters+2)*4)
	if _, err := fs.ReadAt(fat, reserved*bps); err != nil {
		return fmt.Errorf("FAT: %w", err)
	}
	next := func(c uint32) uint32 { return le.Uint32(fat[c*4:]) & 0x0fffffff }
	dataStart := (reserved + fats*fatSectors) * bps
	clusterBytes := spc * bps
	clusterOffset := func(c uint32) int64 { return dataStart + int64(c-2)*clusterBytes }

	// The root directory, following its cluster chain.
	buf := make([]byte, clusterBytes)
	for c, n := root, int64(0); c >= 2 && c < 0x0ffffff8; c, n = next(c), n+1 {
		if int64(c) >= clusters+2 || n > clusters {
			return fmt.Errorf("FAT root directory: bad cluster chain at %d", c)
		}
		if _, err := fs.ReadAt(buf, clusterOffset(c)); err != nil {
			return fmt.Errorf("FAT root directory: %w", err)
		}
		for i := int64(0); i < clusterBytes; i += 32 {
			e := buf[i : i+32]
			if e[0] == 0 {
				break // end of directory
			}
			if e[0] == 0xe5 || e[11] == 0x0f || e[11]&0x10 == 0 || e[0] == '.' {
				continue // deleted, long-name part, not a directory, or . / ..
			}
			dir := uint32(le.Uint16(e[20:]))<<16 | uint32(le.Uint16(e[26:]))
			if dir < 2 || int64(dir) >= clusters+2 {
				return fmt.Errorf("FAT root directory: a directory at cluster %d, outside the file system", dir)
			}
			// ".." is the second entry of the directory's first cluster.
			at := clusterOffset(dir) + 32
			entry := make([]byte, 32)
			if _, err := fs.ReadAt(entry, at); err != nil {
				return fmt.Errorf("FAT directory at cluster %d: %w", dir, err)
			}
			if string(entry[:11]) != "..         " {
				return fmt.Errorf("FAT directory at cluster %d: no '..' in its second slot", dir)
			}
			le.PutUint16(entry[20:], 0)
			le.PutUint16(entry[26:], 0)
			if _, err := w.WriteAt(entry, at); err != nil {
				return fmt.Errorf("FAT directory at cluster %d: %w", dir, err)
			}
		}
	}

	var free, firstFree uint32
	for c := uint32(2); int64(c) < clusters+2; c++ {
		if next(c) == 0 {
			if free == 0 {
				firstFree = c
			}
			free++
		}
	}
	// The FSInfo sector, and its copy in the backup boot area when written.
	for _, sector := range []int64{fsinfo, backup + fsinfo} {
		info := make([]byte, 512) // FSInfo's fields sit in its first 512 bytes whatever the sector size
		off := sector * bps
		if _, err := fs.ReadAt(info, off); err != nil {
			return fmt.Errorf("FAT FSInfo sector %d: %w", sector, err)
		}
		if string(info[0:4]) != "RRaA" || string(info[484:488]) != "rrAa" {
			if sector == fsinfo {
				return fmt.Errorf("FAT: no FSInfo signature in sector %d", sector)
			}
			continue
		}
		le.PutUint32(info[488:], free)
		le.PutUint32(info[492:], firstFree)
		if _, err := w.WriteAt(info[488:496], off+488); err != nil {
			return fmt.Errorf("FAT FSInfo sector %d: %w", sector, err)
		}
	}
	return nil
}
