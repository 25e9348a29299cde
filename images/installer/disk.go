package installer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/gptimage"
)

const (
	mib        = int64(1) << 20
	sectorSize = 512
	espStart   = mib
	// The ESP holds the kernel and initramfs, plus room for FAT's tables
	// and for systemd-boot's random seed; at least 64 MiB keeps it FAT32
	// (65525 clusters) with any cluster size.
	espMinSize = 64 * mib
	espSlack   = 32 * mib
	gptBackup  = mib // the backup GPT (33 sectors), rounded up
)

// DiskIDs are the image's fixed GUIDs.
type DiskIDs struct {
	Disk, ESP, Payload string
}

func (s Spec) diskIDs() DiskIDs {
	id := func(role string) string {
		return gptimage.GUID(fmt.Sprintf("ssbuild installer %s %d %s", s.Name, s.Epoch, role))
	}
	return DiskIDs{Disk: id("disk"), ESP: id("esp"), Payload: id("payload")}
}

func (s Spec) espFiles() ([]espFile, error) {
	cmdline := s.Cmdline
	if cmdline == "" {
		cmdline = DefaultCmdline
	}
	if strings.ContainsAny(cmdline, "\n\r") {
		return nil, fmt.Errorf("kernel command line: no newlines allowed")
	}
	// timeout 0: no menu (a key held at boot still shows it); with entries
	// per host a short menu lets the owner pick one. editor no: nobody
	// edits the command line of an unattended installer.
	timeout := 0
	title := s.Name
	if len(s.Menu) > 0 {
		timeout = MenuTimeout
		title += ", the host by this machine's MAC"
	}
	loader := fmt.Sprintf("default %s\ntimeout %d\neditor no\n", path.Base(EntryFile), timeout)
	// sort-key keeps the menu in this order: the default, then the hosts
	// as the recipe lists them.
	entry := fmt.Sprintf("title ssbuild installer (%s)\nsort-key ssbuild-0\nlinux /%s\ninitrd /%s\noptions %s\n",
		title, KernelFile, InitrdFile, cmdline)
	files := []espFile{
		{name: "EFI/BOOT/BOOTX64.EFI", src: s.SystemdBoot},
		{name: "loader/loader.conf", data: []byte(loader)},
		{name: EntryFile, data: []byte(entry)},
		{name: KernelFile, src: s.Kernel},
		{name: InitrdFile, src: s.Initramfs},
	}
	seen := map[string]bool{}
	for i, m := range s.Menu {
		if !validEntryID(m.ID) || seen[m.ID] {
			return nil, fmt.Errorf("boot menu entry %q: want a unique id of letters, digits and dashes", m.ID)
		}
		seen[m.ID] = true
		if strings.ContainsAny(m.Title+m.Options, "\n\r") {
			return nil, fmt.Errorf("boot menu entry %s: no newlines allowed", m.ID)
		}
		e := fmt.Sprintf("title %s\nsort-key ssbuild-1-%03d\nlinux /%s\ninitrd /%s\noptions %s %s\n",
			m.Title, i, KernelFile, InitrdFile, cmdline, m.Options)
		files = append(files, espFile{name: MenuEntryFile(m.ID), data: []byte(e)})
	}
	return files, nil
}

// MenuTimeout is the boot menu's timeout in seconds when the image has
// menu entries besides the default.
const MenuTimeout = 4

// MenuEntry is a boot menu entry besides the default: the same kernel and
// initramfs with more kernel command line options.
type MenuEntry struct {
	ID      string // file name part: letters, digits, dashes
	Title   string // what the menu shows
	Options string // appended to the kernel command line
}

// MenuEntryFile is the ESP path of the menu entry with this id.
func MenuEntryFile(id string) string { return "loader/entries/ssbuild-installer-" + id + ".conf" }

func validEntryID(id string) bool {
	if id == "" {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

type espFile struct {
	name string
	src  string // file to copy, or
	data []byte
}

func (f espFile) size() (int64, error) {
	if f.src == "" {
		return int64(len(f.data)), nil
	}
	info, err := os.Stat(f.src)
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// espLayout returns the ESP's files, their total size and the ESP's size,
// which are known before the payload is packed: the payload partition
// starts right after the ESP.
func (s Spec) espLayout() (files []espFile, data, size int64, err error) {
	if files, err = s.espFiles(); err != nil {
		return nil, 0, 0, err
	}
	for _, f := range files {
		n, err := f.size()
		if err != nil {
			return nil, 0, 0, fmt.Errorf("ESP: %w", err)
		}
		data += n
	}
	return files, data, espSizeFor(max(espMinSize, roundUp(data*11/10+espSlack, mib))), nil
}

// partitionTable is the image's GPT: the ESP from 1 MiB, the payload after
// it; a disk of espStart+espSize+payloadSize+gptBackup bytes.
func (s Spec) partitionTable(espSize, payloadSize int64) *gpt.Table {
	ids := s.diskIDs()
	payloadStart := espStart + espSize
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               ids.Disk,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: uint64(espStart / sectorSize), End: uint64(payloadStart/sectorSize - 1),
				Type: gpt.EFISystemPartition, Name: stick.ESPLabel, GUID: ids.ESP},
		},
	}
	if payloadSize > 0 {
		table.Partitions = append(table.Partitions, &gpt.Partition{Index: 2, Start: uint64(payloadStart / sectorSize),
			End:  uint64((payloadStart+payloadSize)/sectorSize - 1),
			Type: gpt.LinuxFilesystem, Name: stick.PayloadLabel, GUID: ids.Payload})
	}
	return table
}

// buildESP writes the ESP at path: a sparse disk whose partition 1 lies
// where the image's does, so the file system's bytes (its offset in the
// boot sector among them) are those the image needs; writeDisk copies
// them over.
func (s Spec) buildESP(ctx context.Context, path string, files []espFile, espData, espSize int64) (err error) {
	d, err := diskfs.Create(path, espStart+espSize+gptBackup, diskfs.SectorSize512)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	if err := d.Partition(s.partitionTable(espSize, 0)); err != nil {
		return fmt.Errorf("partition table: %w", err)
	}
	task := s.Progress.Start("ESP", espData, "bytes")
	err = writeESP(ctx, d, s.Epoch, files, task)
	task.Done(err)
	if err != nil {
		return err
	}
	return gptimage.FixFAT32(path, espStart, espSize)
}

// writeDisk completes the image at img, whose payload partition
// mksquashfs has already filled: it sizes the file (the payload partition
// rounded up to MiB, then the backup GPT; the gaps stay holes), writes the
// partition table and copies the ESP in from esp (see buildESP).
func (s Spec) writeDisk(ctx context.Context, img, esp string, espSize int64) (res Result, err error) {
	res.ESPSize = espSize
	payloadStart := espStart + res.ESPSize
	info, err := os.Stat(img)
	if err != nil {
		return res, err
	}
	if info.Size() <= payloadStart {
		return res, fmt.Errorf("payload partition: mksquashfs wrote nothing at offset %d", payloadStart)
	}
	// The partition is the squashfs (padded to 4 KiB by mksquashfs) and
	// zeros up to the next MiB.
	res.PayloadSize = roundUp(info.Size()-payloadStart, mib)
	res.Size = espStart + res.ESPSize + res.PayloadSize + gptBackup
	res.IDs = s.diskIDs()
	if err := os.Truncate(img, res.Size); err != nil {
		return res, err
	}

	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadWrite), diskfs.WithSectorSize(diskfs.SectorSize512))
	if err != nil {
		return res, err
	}
	err = d.Partition(s.partitionTable(res.ESPSize, res.PayloadSize))
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("partition table: %w", err)
	}
	if err := copySparse(ctx, img, esp, espStart, res.ESPSize); err != nil {
		return res, fmt.Errorf("ESP: %w", err)
	}
	return res, nil
}

// copySparse copies size bytes at off from src to the same place in dst,
// in large writes, leaving out chunks of zeros: dst is a hole there.
func copySparse(ctx context.Context, dst, src string, off, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	const chunk = 1 << 20
	buf, zeros := make([]byte, chunk), make([]byte, chunk)
	for end := off + size; off < end; off += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(chunk, end-off)]
		if _, err := in.ReadAt(b, off); err != nil {
			return err
		}
		if bytes.Equal(b, zeros[:len(b)]) {
			continue
		}
		if _, err := out.WriteAt(b, off); err != nil {
			return err
		}
	}
	return out.Close()
}

// writeESP formats partition 1 and writes the files, through
// coalescingStorage: go-diskfs writes a file 512 bytes at a time.
func writeESP(ctx context.Context, d *disk.Disk, epoch int64, files []espFile, task io.Writer) error {
	plain := d.Backend
	c, err := newCoalescingStorage(plain)
	if err != nil {
		return err
	}
	d.Backend = c
	defer func() { d.Backend = plain }()
	err = gptimage.WithEpoch(epoch, func() error {
		fs, err := d.CreateFilesystem(gptimage.FAT32(1, stick.ESPLabel))
		if err != nil {
			return err
		}
		for _, f := range files {
			if err := writeESPFile(ctx, fs, f, task); err != nil {
				return fmt.Errorf("%s: %w", f.name, err)
			}
		}
		return nil
	})
	if ferr := c.w.flush(); err == nil {
		err = ferr
	}
	return err
}

func writeESPFile(ctx context.Context, fs filesystem.FileSystem, f espFile, task io.Writer) error {
	if dir := path.Dir("/" + f.name); dir != "/" {
		if err := fs.Mkdir(dir); err != nil {
			return err
		}
	}
	out, err := fs.OpenFile("/"+f.name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	defer out.Close()
	var in io.Reader
	if f.src != "" {
		src, err := os.Open(f.src)
		if err != nil {
			return err
		}
		defer src.Close()
		in = src
	} else {
		in = strings.NewReader(string(f.data))
	}
	// One large write: go-diskfs's FAT32 grows a file's cluster chain per
	// write, so few big writes are much faster than many small ones.
	b, err := io.ReadAll(ctxReader{ctx, in})
	if err != nil {
		return err
	}
	if _, err := out.Write(b); err != nil {
		return err
	}
	_, _ = task.Write(b)
	return out.Close()
}

// espSizeFor returns the smallest size from min up, in MiB steps, whose
// FAT32 go-diskfs v1.9.4 lays out with room in the FAT for every cluster.
// Its sectors-per-FAT formula leaves out the two reserved FAT entries, so
// for some sizes (64 MiB among them) the last two clusters have no FAT
// entry, and fsck.fat and mtools refuse the file system. FixFAT32 checks
// the result.
func espSizeFor(min int64) int64 {
	for size := min; ; size += mib {
		sectors := size / sectorSize
		spc := int64(1) // sectors per cluster: go-diskfs uses 512-byte clusters up to 260 MB
		switch {
		case size > 8<<30:
			spc = 16
		case size > 260_000_000:
			spc = 8
		}
		const reserved = 32
		denom := sectorSize*spc + 8
		fatSectors := (4*(sectors-reserved) + denom - 1) / denom
		clusters := (sectors - reserved - 2*fatSectors) / spc
		if fatSectors*sectorSize/4 >= clusters+2 {
			return size
		}
	}
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
