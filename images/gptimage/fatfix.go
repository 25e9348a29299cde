package gptimage

import (
	"encoding/binary"
	"fmt"
	"os"
)

// FixFAT32 corrects two things go-diskfs v1.9.4 writes in a FAT32 that
// fsck.fat -n reports (and exits 1 for), so a user checking an ESP sees a
// clean file system:
//   - the ".." entry of a directory in the root names the root's cluster;
//     FAT says 0 there (fat12.go's readDirWithMkdir);
//   - FSInfo's free cluster count is left "unknown" (0xffffffff).
//
// It also checks that the FAT has an entry for every cluster. The file
// system starts at offset start of img and is size bytes long; call it
// after the disk is closed.
func FixFAT32(img string, start, size int64) error {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	boot := make([]byte, 512)
	if _, err := f.ReadAt(boot, start); err != nil {
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
	if bps != 512 || spc == 0 || total*bps > size {
		return fmt.Errorf("FAT boot sector: unexpected geometry (%d bytes per sector, %d per cluster, %d sectors)", bps, spc, total)
	}
	clusters := (total - reserved - fats*fatSectors) / spc
	if entries := fatSectors * bps / 4; entries < clusters+2 {
		return fmt.Errorf("FAT has %d entries for %d clusters", entries, clusters)
	}
	fat := make([]byte, (clusters+2)*4)
	if _, err := f.ReadAt(fat, start+reserved*bps); err != nil {
		return fmt.Errorf("FAT: %w", err)
	}
	next := func(c uint32) uint32 { return le.Uint32(fat[c*4:]) & 0x0fffffff }
	clusterOffset := func(c uint32) int64 {
		return start + (reserved+fats*fatSectors)*bps + int64(c-2)*spc*bps
	}
	chain := func(c uint32) ([]uint32, error) {
		var out []uint32
		for c >= 2 && c < 0x0ffffff8 {
			if int64(c) >= clusters+2 || len(out) > int(clusters) {
				return nil, fmt.Errorf("bad cluster chain at %d", c)
			}
			out = append(out, c)
			c = next(c)
		}
		return out, nil
	}

	rootChain, err := chain(root)
	if err != nil {
		return fmt.Errorf("FAT root directory: %w", err)
	}
	clusterBytes := spc * bps
	buf := make([]byte, clusterBytes)
	for _, rc := range rootChain {
		if _, err := f.ReadAt(buf, clusterOffset(rc)); err != nil {
			return err
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
			// ".." is the second entry of the directory's first cluster.
			dotdot := clusterOffset(dir) + 32
			entry := make([]byte, 32)
			if _, err := f.ReadAt(entry, dotdot); err != nil {
				return err
			}
			if string(entry[:11]) != "..         " {
				return fmt.Errorf("FAT directory at cluster %d: no '..' in its second slot", dir)
			}
			le.PutUint16(entry[20:], 0)
			le.PutUint16(entry[26:], 0)
			if _, err := f.WriteAt(entry, dotdot); err != nil {
				return err
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
	// The FSInfo sector and its copy in the backup boot area (sector 6+1).
	for _, sector := range []int64{fsinfo, int64(le.Uint16(boot[50:])) + fsinfo} {
		info := make([]byte, 512)
		off := start + sector*bps
		if _, err := f.ReadAt(info, off); err != nil {
			return err
		}
		if string(info[0:4]) != "RRaA" || string(info[484:488]) != "rrAa" {
			if sector == fsinfo {
				return fmt.Errorf("FAT: no FSInfo signature in sector %d", sector)
			}
			continue // no backup copy written
		}
		le.PutUint32(info[488:], free)
		le.PutUint32(info[492:], firstFree)
		if _, err := f.WriteAt(info, off); err != nil {
			return err
		}
	}
	return nil
}
