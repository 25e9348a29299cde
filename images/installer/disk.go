package installer

import (
	"bufio"
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

// writeDisk creates the sparse image at img: partition table, ESP with its
// files, and the payload image written into partition 2.
func (s Spec) writeDisk(ctx context.Context, img, payload string) (res Result, err error) {
	files, err := s.espFiles()
	if err != nil {
		return res, err
	}
	var espData int64
	for _, f := range files {
		n, err := f.size()
		if err != nil {
			return res, fmt.Errorf("ESP: %w", err)
		}
		espData += n
	}
	res.ESPSize = espSizeFor(max(espMinSize, roundUp(espData*11/10+espSlack, mib)))
	info, err := os.Stat(payload)
	if err != nil {
		return res, err
	}
	// WritePartitionContents fills the whole partition: the squashfs is
	// padded with zeros to it (mksquashfs pads to 4 KiB itself).
	res.PayloadSize = roundUp(info.Size(), mib)
	if err := os.Truncate(payload, res.PayloadSize); err != nil {
		return res, err
	}
	res.Size = espStart + res.ESPSize + res.PayloadSize + gptBackup
	res.IDs = s.diskIDs()

	d, err := diskfs.Create(img, res.Size, diskfs.SectorSize512)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := d.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	payloadStart := espStart + res.ESPSize
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               res.IDs.Disk,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: uint64(espStart / sectorSize), End: uint64(payloadStart/sectorSize - 1),
				Type: gpt.EFISystemPartition, Name: stick.ESPLabel, GUID: res.IDs.ESP},
			{Index: 2, Start: uint64(payloadStart / sectorSize), End: uint64((payloadStart+res.PayloadSize)/sectorSize - 1),
				Type: gpt.LinuxFilesystem, Name: stick.PayloadLabel, GUID: res.IDs.Payload},
		},
	}
	if err := d.Partition(table); err != nil {
		return res, fmt.Errorf("partition table: %w", err)
	}

	task := s.Progress.Start("ESP", espData, "bytes")
	err = gptimage.WithEpoch(s.Epoch, func() error {
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
	task.Done(err)
	if err != nil {
		return res, fmt.Errorf("ESP: %w", err)
	}
	if err := gptimage.FixFAT32(img, espStart, res.ESPSize); err != nil {
		return res, fmt.Errorf("ESP: %w", err)
	}

	p, err := os.Open(payload)
	if err != nil {
		return res, err
	}
	defer p.Close()
	task = s.Progress.Start("payload partition", res.PayloadSize, "bytes")
	// Reads buffered and writes coalesced: go-diskfs moves 512 bytes at a time.
	err = writeCoalesced(d, 2, bufio.NewReaderSize(io.TeeReader(ctxReader{ctx, p}, task), 4<<20))
	task.Done(err)
	if err != nil {
		return res, fmt.Errorf("payload partition: %w", err)
	}
	return res, nil
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

// writeCoalesced is d.WritePartitionContents through coalescingStorage.
func writeCoalesced(d *disk.Disk, partition int, r io.Reader) error {
	plain := d.Backend
	c, err := newCoalescingStorage(plain)
	if err != nil {
		return err
	}
	d.Backend = c
	defer func() { d.Backend = plain }()
	if _, err := d.WritePartitionContents(partition, r); err != nil {
		return err
	}
	return c.w.flush()
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
