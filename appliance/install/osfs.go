package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// The OS filesystem is written by the kernel, not by Go: the installer
// attaches a loop device over the OS partition's byte range of the target
// (the same code for a real disk and for a disk image), mounts it as ext4,
// grows it to the partition online (EXT4_IOC_RESIZE_FS, what resize2fs does
// on a mounted filesystem) and writes the config files with their modes.
// The initramfs needs the loop and ext4 modules, nothing else.

// GrowMarker is written into the OS filesystem when growing it failed: the
// first boot must then run resize2fs on the OS partition.
const GrowMarker = "/var/lib/ssbuild/grow-rootfs"

// ext4ResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64).
const ext4ResizeFS = 0x40086610

func (w *writer) writeConfig(ctx context.Context) error {
	for _, f := range w.plan.Files {
		if err := validFile(f); err != nil {
			return err
		}
	}
	for _, c := range w.plan.Copies {
		if err := validFile(File{Path: c.To}); err != nil {
			return err
		}
	}
	start, size, err := w.partitionRange(partOS)
	if err != nil {
		return err
	}
	loop, err := attachLoop(w.opt.DevRoot, w.f, start, size)
	if err != nil {
		return err
	}
	defer loop.Close() // autoclear: the loop device goes away with the last user
	dir, err := os.MkdirTemp(w.opt.WorkDir, "ssbuild-os-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.Mount(loop.Name(), dir, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s (OS partition of %s) as ext4: %w", loop.Name(), w.target, err)
	}
	mounted := true
	defer func() {
		if mounted {
			_ = unix.Unmount(dir, 0)
		}
	}()
	if err := grow(dir, size); err != nil {
		w.opt.Progress.Info("could not grow the OS filesystem on %s (%v): the first boot must (marker %s)", w.target, err, GrowMarker)
		if err := writeFile(dir, File{Path: GrowMarker, Data: []byte(err.Error() + "\n"), Mode: 0o644}); err != nil {
			return err
		}
	}
	if err := w.copyFolders(ctx, dir); err != nil {
		return err
	}
	for _, f := range w.plan.Files {
		if err := writeFile(dir, f); err != nil {
			return err
		}
	}
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount OS filesystem: %w", err)
	}
	mounted = false
	return w.f.Sync()
}

// copyFolders copies the plan's payload folders into the OS filesystem
// mounted at root. A copy left by an earlier, cut short run is removed
// first, so the step is redone whole; what is left must fit the free space
// before anything is written. Each file is hashed as it is copied and
// checked against the manifest, as the OS image is.
func (w *writer) copyFolders(ctx context.Context, root string) error {
	type folder struct {
		c     Copy
		files []string
		dst   string
		tmp   string
	}
	var folders []folder
	var need int64
	for _, c := range w.plan.Copies {
		f := folder{c: c, files: w.p.FilesUnder(c.From), dst: filepath.Join(root, filepath.FromSlash(c.To))}
		f.tmp = f.dst + ".ssbuild-tmp"
		for _, p := range []string{f.dst, f.tmp} {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("copy %s to %s: remove the earlier copy: %w", c.From, c.To, err)
			}
		}
		for _, rel := range f.files {
			info, err := os.Stat(w.p.Path(c.From + "/" + rel))
			if err != nil {
				return fmt.Errorf("copy %s to %s: %w", c.From, c.To, err)
			}
			need += (info.Size() + 4095) / 4096 * 4096 // whole 4 KiB blocks, as ext4 stores them
		}
		folders = append(folders, f)
	}
	if len(folders) == 0 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("OS filesystem on %s: %w", w.target, err)
	}
	// Keep room for the config files and the first boot's own state.
	const reserve = 16 << 20
	if free := int64(st.Bavail) * st.Bsize; need+reserve > free {
		return fmt.Errorf("the payload's folders to copy (%s) need %s, and %s is kept free for the first boot; the OS filesystem on %s has %s free: make installer.layout.os larger or the base image smaller",
			copyNames(w.plan.Copies), humanBytes(need), humanBytes(reserve), w.target, humanBytes(free))
	}
	buf := make([]byte, copyBuffer)
	for _, f := range folders {
		task := w.opt.Progress.Start("copy "+f.c.From+" to "+f.c.To, int64(len(f.files)), "files")
		err := w.copyFolder(ctx, f.c, f.files, f.tmp, buf, task)
		if err == nil {
			err = os.Rename(f.tmp, f.dst)
		}
		task.Done(err)
		if err != nil {
			return fmt.Errorf("copy %s to %s: %w", f.c.From, f.c.To, err)
		}
	}
	return nil
}

// copyFolder copies the payload files of c into tmp, root-owned, files
// 0644 and folders 0755, each synced and checked against the manifest.
func (w *writer) copyFolder(ctx context.Context, c Copy, files []string, tmp string, buf []byte, task *progress.Task) error {
	for _, rel := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := c.From + "/" + rel
		in, err := os.Open(w.p.Path(name))
		if err != nil {
			return err
		}
		h := sha256.New()
		err = writeFrom(tmp, "/"+rel, 0o644, io.TeeReader(in, h), buf)
		in.Close()
		if err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != w.p.Files[name] {
			return fmt.Errorf("%s read back from the stick with sha256 %s, verified as %s: the stick is failing", name, got, w.p.Files[name])
		}
		task.Add(1)
	}
	return nil
}

func copyNames(cs []Copy) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.From)
	}
	return strings.Join(s, ", ")
}

// grow resizes the mounted ext4 filesystem at dir to fill size bytes.
func grow(dir string, size int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	blocks := uint64(size) / uint64(st.Bsize)
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.Fd(), ext4ResizeFS, uintptr(unsafe.Pointer(&blocks)))
	if errno != 0 {
		return fmt.Errorf("EXT4_IOC_RESIZE_FS to %d blocks: %w", blocks, errno)
	}
	return nil
}

// writeFile writes f under root atomically (temporary file, fsync, rename),
// root-owned with f's mode; parents are made 0755.
func writeFile(root string, f File) error {
	return writeFrom(root, f.Path, f.Mode, bytes.NewReader(f.Data), nil)
}

// writeFrom is writeFile with the content read from src (through buf, when
// given: the payload's large files are copied in large blocks).
func writeFrom(root, path string, mode fs.FileMode, src io.Reader, buf []byte) error {
	dst := filepath.Join(root, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := dst + ".ssbuild-tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode.Perm())
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if buf == nil {
		_, err = io.Copy(out, src)
	} else {
		// The struct wrappers keep io.CopyBuffer from falling back to
		// ReadFrom's small blocks.
		_, err = io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{src}, buf)
	}
	if err == nil {
		err = out.Chmod(mode.Perm()) // the umask must not widen or narrow it
	}
	if err == nil {
		err = out.Chown(0, 0)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// attachLoop attaches a free loop device to size bytes of backing at off,
// with autoclear so it detaches when its last user (the mount) is gone.
func attachLoop(devRoot string, backing *os.File, off, size int64) (*os.File, error) {
	ctl, err := os.OpenFile(filepath.Join(devRoot, "loop-control"), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("loop device (is the loop module loaded?): %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device between GET_FREE and
	// CONFIGURE: retry a few times.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop device: LOOP_CTL_GET_FREE: %w", err)
		}
		name := filepath.Join(devRoot, fmt.Sprintf("loop%d", n))
		dev, err := openLoop(name)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: unix.LoopInfo64{
			Offset: uint64(off), Sizelimit: uint64(size), Flags: unix.LO_FLAGS_AUTOCLEAR}}
		copy(cfg.Info.File_name[:], backing.Name())
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) || attempt == 5 {
			return nil, fmt.Errorf("loop device %s: LOOP_CONFIGURE: %w", name, err)
		}
	}
}

// openLoop opens a loop device node, waiting briefly for devtmpfs to make it.
func openLoop(name string) (*os.File, error) {
	for i := 0; ; i++ {
		dev, err := os.OpenFile(name, os.O_RDWR, 0)
		if err == nil || !errors.Is(err, os.ErrNotExist) || i == 50 {
			if err != nil {
				return nil, fmt.Errorf("loop device: %w", err)
			}
			return dev, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}
