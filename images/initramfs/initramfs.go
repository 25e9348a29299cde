// Package initramfs builds the installer's initramfs: a gzip-compressed
// cpio "newc" archive, written in Go, holding a given binary as /init, the
// kernel modules the installer needs (resolved with their dependencies
// from the kernel's modules.dep and modules.softdep) and a few device
// nodes and mount points.
//
// Layout of the archive:
//
//	init                              the given binary (e.g. ssbuild)
//	dev/console                       char 5:1: the kernel gives it to init as stdin/out/err
//	dev/ proc/ sys/ run/ tmp/ mnt/    mount points
//	lib/modules/<version>/kernel/...  the modules, as the kernel package ships them
//	lib/modules/<version>/modules.dep, modules.softdep, modules.alias
//	                                  depmod's indexes, restricted to those modules
//	lib/modules/<version>/modules.builtin
//	lib/modules/<version>/modules.load our load order (modload.LoadOrderFile)
//	...                               Spec.Files, if any
//
// How the init loads modules: it needs no modprobe. modload.Load reads
// modules.load and calls finit_module(2) on each file in that order, which
// puts every dependency before the modules that need it; a module already
// loaded (EEXIST) is fine. Compressed modules (.ko.xz/.zst/.gz) are handed
// to the kernel with MODULE_INIT_COMPRESSED_FILE, which kernels with
// CONFIG_MODULE_DECOMPRESS accept; Debian 12's modules are plain .ko.
//
// What else the init has to do, since nothing runs before it (no udev):
// mount proc, sysfs and devtmpfs; after loading the modules, wait for the
// disks, their partitions and their /dev nodes to appear (USB storage and
// partition scans come seconds after the module loads; devtmpfs makes
// nodes asynchronously); find partitions by GPT name through PARTNAME= in
// /sys/class/block/<dev>/uevent. testdata/testinit does all of this and
// the boot tests check it.
//
// The archive is reproducible: entries sorted, one fixed mtime (the epoch),
// owner 0:0, inode numbers in entry order, and one gzip member compressed
// on every core in fixed blocks (internal/pgz) with a header without name
// or time. The same inputs give the same bytes on any machine.
package initramfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sovereign-stack/ssbuild/handoff/modload"
	"github.com/sovereign-stack/ssbuild/internal/pgz"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Spec says what goes into an initramfs.
type Spec struct {
	// Init is the binary that becomes /init. It must be static: the
	// initramfs holds no libraries.
	Init string
	// Root is the tree that holds the kernel's lib/modules/<version>
	// (the OS root filesystem the kernel comes from).
	Root string
	// KernelVersion selects lib/modules/<version>; empty means the tree's
	// only kernel.
	KernelVersion string
	// Modules are the modules to include, by name or alias; nil means
	// DefaultModules. Dependencies are added.
	Modules []string
	// OptionalModules are included with their dependencies when the
	// kernel has them and left out (Result.Skipped) when it does not.
	OptionalModules []string
	// Files are extra regular files (0644), archive path -> content, e.g.
	// the key the installer checks its payload with.
	Files map[string][]byte
	// Epoch is every entry's mtime (SOURCE_DATE_EPOCH).
	Epoch int64
	// Progress reports the build; nil: none.
	Progress *progress.Reporter
}

// Result describes a built initramfs.
type Result struct {
	KernelVersion string
	// Modules are the module files included, in load order, relative to
	// lib/modules/<KernelVersion>.
	Modules []string
	// Builtin are wanted modules the kernel has built in.
	Builtin []string
	// Skipped are optional modules the kernel has neither as a file nor
	// built in.
	Skipped []string
	Size    int64
	SHA256  string
}

// Archive assembles the cpio archive's entries without writing them.
func (s Spec) Archive() (*Archive, Result, error) {
	var res Result
	ver, err := s.kernelVersion()
	if err != nil {
		return nil, res, err
	}
	res.KernelVersion = ver
	modDir := filepath.Join(s.Root, "lib/modules", ver)
	ix, err := readIndex(modDir)
	if err != nil {
		return nil, res, fmt.Errorf("initramfs: modules of %s: %w", ver, err)
	}
	wanted := s.Modules
	if wanted == nil {
		wanted = DefaultModules
	}
	if res.Modules, res.Builtin, res.Skipped, err = ix.resolve(wanted, s.OptionalModules); err != nil {
		return nil, res, fmt.Errorf("initramfs: kernel %s: %w", ver, err)
	}

	a := NewArchive(s.Epoch)
	if err := a.AddFile("init", s.Init, 0o755); err != nil {
		return nil, res, fmt.Errorf("initramfs: init: %w", err)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "mnt"} {
		if err := a.AddDir(d, 0o755); err != nil {
			return nil, res, err
		}
	}
	if err := a.AddDir("tmp", 0o777|os.ModeSticky); err != nil {
		return nil, res, err
	}
	if err := a.AddCharDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, res, err
	}
	dest := "lib/modules/" + ver + "/"
	for _, m := range res.Modules {
		if err := a.AddFile(dest+m, filepath.Join(modDir, m), 0o644); err != nil {
			return nil, res, fmt.Errorf("initramfs: module: %w", err)
		}
	}
	indexes, err := ix.filteredIndexes(res.Modules)
	if err != nil {
		return nil, res, fmt.Errorf("initramfs: %w", err)
	}
	indexes[modload.LoadOrderFile] = []byte(strings.Join(res.Modules, "\n") + "\n")
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		indexes["modules.builtin"] = b
	} else if !os.IsNotExist(err) {
		return nil, res, fmt.Errorf("initramfs: %w", err)
	}
	for name, b := range indexes {
		if err := a.AddData(dest+name, b, 0o644); err != nil {
			return nil, res, err
		}
	}
	for name, b := range s.Files {
		if err := a.AddData(name, b, 0o644); err != nil {
			return nil, res, fmt.Errorf("initramfs: %w", err)
		}
	}
	return a, res, nil
}

func (s Spec) kernelVersion() (string, error) {
	if s.KernelVersion != "" {
		return s.KernelVersion, nil
	}
	dir := filepath.Join(s.Root, "lib/modules")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	var vers []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "modules.dep")); err == nil {
			vers = append(vers, e.Name())
		}
	}
	if len(vers) != 1 {
		return "", fmt.Errorf("initramfs: %s holds kernels %v: set KernelVersion to one of them", dir, vers)
	}
	return vers[0], nil
}

// Write writes the gzip-compressed archive to w.
func (s Spec) Write(w io.Writer) (Result, error) {
	a, res, err := s.Archive()
	if err != nil {
		return res, err
	}
	rep := s.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	task := rep.Start("initramfs", 0, "bytes")
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, h)}
	err = func() error {
		// On every core, in fixed blocks, no name and no time in the
		// header: the output depends only on the contents (pgz).
		zw := pgz.NewWriter(io.MultiWriter(cw, task))
		if _, err := a.WriteTo(zw); err != nil {
			return err
		}
		return zw.Close()
	}()
	task.Done(err)
	if err != nil {
		return res, fmt.Errorf("initramfs: %w", err)
	}
	res.Size, res.SHA256 = cw.n, hex.EncodeToString(h.Sum(nil))
	return res, nil
}

// Build writes the initramfs to out: into a temporary file next to it,
// synced and renamed into place, so out is either complete or absent.
func Build(ctx context.Context, s Spec, out string) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return Result{}, fmt.Errorf("initramfs: %w", err)
	}
	defer os.Remove(f.Name()) // after the rename there is nothing to remove
	res, err := s.Write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), out)
	}
	if err != nil {
		return Result{}, fmt.Errorf("initramfs %s: %w", out, err)
	}
	return res, nil
}
