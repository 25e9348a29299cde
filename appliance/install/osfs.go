package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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
	dst := filepath.Join(root, filepath.FromSlash(f.Path))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	tmp := dst + ".ssbuild-tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, f.Mode.Perm())
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	_, err = out.Write(f.Data)
	if err == nil {
		err = out.Chmod(f.Mode.Perm()) // the umask must not widen or narrow it
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
		return fmt.Errorf("write %s: %w", f.Path, err)
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
