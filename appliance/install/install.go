package install

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/fatfix"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/steps"
	"github.com/sovereign-stack/ssbuild/recipes"
)

const (
	alignment    = 1 << 20 // every partition starts on a 1 MiB boundary
	copyBuffer   = 4 << 20
	partESP      = 1
	partOS       = 2
	partZFS      = 3
	zfsPartition = gpt.SolarisUsrAndAppleZFS // 6A898CC3-1DD2-11B2-99A6-080020736631, what zpool create makes
)

// File is one file the installer writes into the OS filesystem.
type File struct {
	Path string      // absolute path in the installed OS, e.g. /etc/ssbuild/appliance.yaml
	Data []byte      //
	Mode fs.FileMode // permission bits; parents are made 0755, owner is root
}

// Copy is a payload folder the installer copies into the OS filesystem.
type Copy struct {
	From string // the payload folder, e.g. base-image; only its manifest's files are copied
	To   string // absolute path of the folder in the installed OS; replaced whole
}

// Plan is one install onto one target.
type Plan struct {
	Target string // whole-disk device, or a disk image file in tests
	Layout recipes.Layout
	Host   string
	Files  []File // identity and config, written into the OS filesystem
	Copies []Copy // payload folders copied into the OS filesystem (the initiator's base image)
	// Expect is the target as it was when it was chosen; Install checks it
	// again, on the opened device, before the first write, and stops
	// without writing if anything changed. nil: no check (tests of
	// Install alone).
	Expect *Identity
}

// Options are the install's surroundings.
type Options struct {
	Progress *progress.Reporter
	DevRoot  string // where loop device nodes appear; default /dev
	WorkDir  string // where the OS filesystem is mounted; default os.TempDir()
	SysRoot  string // where Plan.Expect's serial and WWID are read; default /sys
	// AfterStep runs after each step is recorded in the journal; an error
	// stops the install there (tests use it to cut the power).
	AfterStep func(step string) error
}

// ErrAlreadyInstalled is returned when the target's journal says this
// payload was installed for this host already.
var ErrAlreadyInstalled = errors.New("already installed")

// Install writes p onto plan.Target: GPT, OS, ESP, config, each as a
// journalled step, continuing from the last completed step of an earlier
// run of the same payload for the same host. The payload must have been
// verified (VerifyPayload); nothing is written before Install is called.
func Install(ctx context.Context, p *Payload, plan Plan, opt Options) (err error) {
	if opt.Progress == nil {
		opt.Progress = progress.Discard()
	}
	if opt.DevRoot == "" {
		opt.DevRoot = "/dev"
	}
	flags := os.O_RDWR
	if info, err := os.Stat(plan.Target); err == nil && info.Mode()&fs.ModeDevice != 0 {
		flags |= os.O_EXCL // a block device in use (mounted, held) is refused by the kernel
	}
	f, err := os.OpenFile(plan.Target, flags, 0)
	if err != nil {
		return fmt.Errorf("install onto %s: open: %w", plan.Target, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("install onto %s: close: %w", plan.Target, cerr)
		}
	}()
	if plan.Expect != nil {
		got, err := identifyOpen(cmp.Or(opt.SysRoot, "/sys"), f)
		if err != nil {
			return err
		}
		if got != *plan.Expect {
			return fmt.Errorf("install onto %s: the disk changed since it was chosen (then: %s; now: %s): nothing was written; boot the installer again", plan.Target, plan.Expect, got)
		}
	}
	j, ok, err := ReadJournal(plan.Target)
	if err != nil {
		return err
	}
	if !ok || j.Payload != p.Digest || j.Host != plan.Host {
		j = Journal{Payload: p.Digest, Host: plan.Host} // another payload's half-done install: start over
	} else if j.Completed(StepDone) {
		return fmt.Errorf("install onto %s for %s: %w", plan.Target, plan.Host, ErrAlreadyInstalled)
	} else if j.Step != "" {
		opt.Progress.Info("continuing the install on %s after step %s", plan.Target, j.Step)
	}
	w := &writer{f: f, target: plan.Target, p: p, plan: plan, opt: opt}
	nothing := func(context.Context) error { return nil }
	r := steps.Runner{Stage: "install onto " + plan.Target, Skip: j.Completed,
		After: func(name string, took time.Duration) error {
			opt.Progress.Info("%s: %s (%s)", plan.Target, name, took.Round(time.Millisecond))
			j.Step = name
			if err := writeJournal(f, j); err != nil {
				return err
			}
			if opt.AfterStep != nil {
				return opt.AfterStep(name)
			}
			return nil
		}}
	return r.Run(ctx,
		steps.Step{Name: StepVerified, Run: nothing},
		steps.Step{Name: StepPartitioned, Run: w.partition},
		steps.Step{Name: StepOSWritten, Run: w.writeOS},
		steps.Step{Name: StepESPWritten, Run: w.writeESP},
		steps.Step{Name: StepConfigWritten, Run: w.writeConfig},
		steps.Step{Name: StepDone, Run: nothing})
}

type writer struct {
	f      *os.File
	target string
	p      *Payload
	plan   Plan
	opt    Options
}

// open gives a go-diskfs view of the target over the writer's descriptor.
func (w *writer) open() (*disk.Disk, error) {
	return diskfs.OpenBackend(file.New(w.f, false), diskfs.WithSectorSize(diskfs.SectorSizeDefault))
}

// Table is the target's partition table for a disk of size bytes with
// sectors of sector bytes.
func Table(size, sector int64, l recipes.Layout) (*gpt.Table, error) {
	if size < MinDiskSize(l) {
		return nil, fmt.Errorf("disk of %s is smaller than %s, the smallest the layout allows", humanBytes(size), humanBytes(MinDiskSize(l)))
	}
	espStart := int64(alignment)
	osStart := espStart + alignUp(int64(l.ESP))
	zfsStart := osStart + alignUp(int64(l.OS))
	entrySectors := (128*128 + sector - 1) / sector
	lastUsable := size/sector - 2 - entrySectors // backup entries and header at the end
	lba := func(b int64) uint64 { return uint64(b / sector) }
	return &gpt.Table{
		LogicalSectorSize:  int(sector),
		PhysicalSectorSize: int(sector),
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{
			{Index: partESP, Start: lba(espStart), End: lba(osStart) - 1, Type: gpt.EFISystemPartition, Name: hostdisk.LabelESP},
			{Index: partOS, Start: lba(osStart), End: lba(zfsStart) - 1, Type: gpt.LinuxFilesystem, Name: hostdisk.LabelOS},
			{Index: partZFS, Start: lba(zfsStart), End: uint64(lastUsable), Type: zfsPartition, Name: hostdisk.LabelZFS},
		},
	}, nil
}

func alignUp(n int64) int64 { return (n + alignment - 1) / alignment * alignment }

// partition clears old signatures where blkid, zpool or the first boot
// would find them, then writes the GPT.
func (w *writer) partition(ctx context.Context) error {
	d, err := w.open()
	if err != nil {
		return err
	}
	table, err := Table(d.Size, d.LogicalBlocksize, w.plan.Layout)
	if err != nil {
		return err
	}
	zero := func(off, n int64) error {
		if _, err := w.f.WriteAt(make([]byte, n), off); err != nil {
			return fmt.Errorf("clear %d bytes at %d: %w", n, off, err)
		}
		return nil
	}
	// Everything before the journal (old MBR, GPT, whole-disk filesystem
	// and ZFS labels), the start of every partition and the end of the
	// last one (ZFS keeps two labels there).
	if err := zero(0, journalOffset); err != nil {
		return err
	}
	for _, part := range table.Partitions {
		if err := zero(int64(part.Start)*d.LogicalBlocksize, alignment); err != nil {
			return err
		}
	}
	last := table.Partitions[len(table.Partitions)-1]
	if err := zero((int64(last.End)+1)*d.LogicalBlocksize-alignment, alignment); err != nil {
		return err
	}
	rw, err := d.Backend.Writable()
	if err != nil {
		return err
	}
	if err := table.Write(rw, d.Size); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	// The installer reaches the partitions through byte ranges, never the
	// kernel's partition devices, and the installed system reads the table
	// at boot: a kernel that cannot re-read it now (busy, or a loop device
	// without partscan) only gets a note.
	if err := d.ReReadPartitionTable(); err != nil {
		w.opt.Progress.Info("%s: kernel keeps the old partition table until reboot: %v", w.target, err)
	}
	return nil
}

// partitionRange is where partition n is on the target, in bytes.
func (w *writer) partitionRange(n int) (start, size int64, err error) {
	d, err := w.open()
	if err != nil {
		return 0, 0, err
	}
	t, err := d.GetPartitionTable()
	if err != nil {
		return 0, 0, fmt.Errorf("read GPT: %w", err)
	}
	parts := t.GetPartitions()
	if n < 1 || n > len(parts) {
		return 0, 0, fmt.Errorf("GPT has no partition %d", n)
	}
	return parts[n-1].GetStart(), parts[n-1].GetSize(), nil
}

// writeOS copies the OS ext4 image into the OS partition block by block.
// The image is smaller than the partition; writeConfig grows it.
func (w *writer) writeOS(ctx context.Context) error {
	start, size, err := w.partitionRange(partOS)
	if err != nil {
		return err
	}
	src, err := os.Open(w.p.Path(stick.OSImage))
	if err != nil {
		return err
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return err
	}
	if err := hostdisk.FitOS(info.Size(), size); err != nil {
		return err
	}
	task := w.opt.Progress.Start("write OS to "+w.target, info.Size(), "bytes")
	err = writeImage(ctx, w.f, start, src, w.p.Files[stick.OSImage], task)
	task.Done(err)
	return err
}

// writeImage copies src to dst at off and syncs. The bytes are hashed as
// they are read: a stick that reads back differently than when it was
// verified (want) fails the step.
func writeImage(ctx context.Context, dst *os.File, off int64, src io.Reader, want string, task io.Writer) error {
	h := sha256.New()
	if _, err := copyAt(ctx, dst, off, src, h, task); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s read back from the stick with sha256 %s, verified as %s: the stick is failing", stick.OSImage, got, want)
	}
	return dst.Sync()
}

// copyAt copies src to dst at offset off in large blocks, feeding h (when
// not nil) each block while the block is written: on two cores hashing
// then writing in turn halved the rate (SHA-256 here runs at ~1.4 GB/s).
func copyAt(ctx context.Context, dst *os.File, off int64, src io.Reader, h hash.Hash, task io.Writer) (int64, error) {
	buf := make([]byte, copyBuffer)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		r, rerr := io.ReadFull(src, buf)
		if r > 0 {
			hashed := make(chan struct{})
			go func() {
				if h != nil {
					h.Write(buf[:r])
				}
				close(hashed)
			}()
			_, werr := dst.WriteAt(buf[:r], off+n)
			<-hashed
			if werr != nil {
				return n, werr
			}
			n += int64(r)
			task.Write(buf[:r])
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// writeESP makes a FAT32 filesystem on the ESP and copies the payload's
// esp/ tree onto it, bootloader at EFI/BOOT/BOOTX64.EFI.
func (w *writer) writeESP(ctx context.Context) error {
	d, err := w.open()
	if err != nil {
		return err
	}
	if _, err := d.GetPartitionTable(); err != nil {
		return fmt.Errorf("read GPT: %w", err)
	}
	esp, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: partESP, FSType: filesystem.TypeFat32, VolumeLabel: hostdisk.FATLabelESP})
	if err != nil {
		return fmt.Errorf("make FAT32: %w", err)
	}
	made := map[string]bool{}
	buf := make([]byte, 64<<20)
	for _, rel := range w.p.ESPFiles() {
		if err := ctx.Err(); err != nil {
			return err
		}
		var parents []string // top-down: EFI, EFI/BOOT
		for dir := path.Dir(rel); dir != "."; dir = path.Dir(dir) {
			parents = append([]string{dir}, parents...)
		}
		for _, dir := range parents {
			if made[dir] {
				continue
			}
			if err := esp.Mkdir("/" + dir); err != nil {
				return fmt.Errorf("mkdir %s: %w", dir, err)
			}
			made[dir] = true
		}
		if err := copyToFS(esp, "/"+rel, w.p.Path(stick.ESPDir+"/"+rel), w.p.Files[stick.ESPDir+"/"+rel], buf); err != nil {
			return fmt.Errorf("copy %s: %w", rel, err)
		}
	}
	start, size, err := w.partitionRange(partESP)
	if err != nil {
		return err
	}
	if err := fatfix.Repair(io.NewSectionReader(w.f, start, size), io.NewOffsetWriter(w.f, start), size); err != nil {
		return err
	}
	return w.f.Sync()
}

// copyToFS copies src into fsys at dst, hashing the bytes as they are
// read: like os.img, a boot file that reads back differently than the
// manifest says (want) fails the step, so a failing stick never leaves a
// corrupt bootloader, kernel or initrd behind a recorded step.
func copyToFS(fsys filesystem.FileSystem, dst, src, want string, buf []byte) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := fsys.OpenFile(dst, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return err
	}
	// Few large writes: go-diskfs allocates clusters and rewrites the FAT
	// on every Write; io.Copy's 32 KiB writes took 6 s for a 40 MiB file,
	// 64 MiB writes 0.23 s. (The struct wrappers keep io.CopyBuffer from
	// using WriteTo/ReadFrom, which would fall back to 32 KiB.)
	h := sha256.New()
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, io.TeeReader(in, h), buf); err != nil {
		out.Close()
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		out.Close()
		return fmt.Errorf("%s read back from the stick with sha256 %s, manifest says %s: the stick is failing", src, got, want)
	}
	return out.Close()
}

// validFile checks a config file's path before it is joined under the
// mount point.
func validFile(f File) error {
	if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || strings.Contains(f.Path, "\x00") {
		return fmt.Errorf("file %q: want a clean absolute path", f.Path)
	}
	return nil
}
