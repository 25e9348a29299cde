// Package lxdimage writes a root filesystem directory as LXD images, byte for
// byte reproducibly: the same tree and epoch give the same files.
//
// Output folder (every file listed in SHA256SUMS):
//
//	metadata.tar.gz    metadata.yaml + templates/ (hostname, hosts); pairs
//	                   with either rootfs below (a split image)
//	rootfs.squashfs    container rootfs:  lxc image import metadata.tar.gz rootfs.squashfs
//	container.tar.gz   unified container image (metadata.yaml, templates/, rootfs/)
//	disk.qcow2         VM disk (GPT: ESP + ext4 root):  lxc image import metadata.tar.gz disk.qcow2
//	manifest.json      inputs, outputs (sha256, size), LXD fingerprints, packages, tool versions
//	SHA256SUMS         sha256sum -c format
//
// Everything is written into a temporary sibling folder that is renamed
// into place last, so a folder at the output path is always complete.
//
// Reproducibility: the bytes depend only on the tree's content, modes,
// owners and xattrs, the Spec and the tool versions (recorded in the
// manifest), never on the tree's times or directory order. Every file time
// is the epoch (mksquashfs -all-time; the Go tar writer; debugfs after
// mkfs.ext4 -d). Tar entries are sorted, carry numeric owners without
// names and no atime/ctime; generated entries (metadata, templates) are
// owned by root, tree entries keep their owners (forcing 0 would break
// groups like shadow). The VM disk's GUIDs, ext4 UUID and hash seed derive
// from the image name and epoch. Gzip headers carry no name and no time.
package lxdimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/internal/pgz"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// rootDirMode is the image's / in every format, root-owned, whatever the
// build folder's own mode and owner (a temp dir is 0700, which would lock
// every service out of the instance's /).
const rootDirMode = 0o755

// Format is one kind of LXD image.
type Format string

const (
	Container Format = "container" // metadata + rootfs.squashfs, and a unified tarball
	VM        Format = "vm"        // metadata + qcow2 disk (GPT, ESP, ext4 root)
)

// Spec is one build.
type Spec struct {
	RootFS  string   // the root filesystem directory; read, never changed
	OutDir  string   // must not exist; appears complete or not at all
	Formats []Format // default: Container
	// Epoch (SOURCE_DATE_EPOCH) is the creation date and every file time.
	// Required: the caller decides between the recipe, the environment
	// and the clock.
	Epoch        int64
	Architecture string // LXD's name (x86_64, aarch64); default: this machine's
	Properties   Properties
	// Inputs are recorded in the manifest as given (e.g. the recipe, the
	// rootfs source, pre-loaded images, each with its digest).
	Inputs []Input
	// Compression for the squashfs: "xz" (default, smaller) or "gzip"
	// (faster); passed to mksquashfs, which decides what it supports.
	Compression string
	VM          VMOptions
	Progress    *progress.Reporter // nil: no progress
	// Reuse names, per output file (MetadataFile, SquashfsFile, UnifiedFile,
	// DiskFile), a file the caller has verified to be exactly what this
	// Spec would write (an artifact cache's copy): it is moved into the
	// output instead of being written. The manifest is always written.
	Reuse map[string]string
}

// Input is one thing the image was built from.
type Input struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Build writes the images of s and returns the manifest it wrote.
func Build(ctx context.Context, s Spec) (*Manifest, error) {
	s, err := s.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("lxd image: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.OutDir), 0o755); err != nil {
		return nil, fmt.Errorf("lxd image: output: %w", err)
	}
	// A sibling, so the final rename stays on one filesystem.
	tmp, err := os.MkdirTemp(filepath.Dir(s.OutDir), "."+filepath.Base(s.OutDir)+".partial-")
	if err != nil {
		return nil, fmt.Errorf("lxd image: output: %w", err)
	}
	m, err := s.build(ctx, tmp)
	if err == nil {
		err = os.Chmod(tmp, 0o755) // MkdirTemp made it 0700
	}
	if err == nil {
		err = syncFiles(tmp)
	}
	if err == nil {
		if err = os.Rename(tmp, s.OutDir); err != nil {
			err = fmt.Errorf("output: %w", err)
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("lxd image %s: %w", s.OutDir, err)
	}
	return m, nil
}

func (s Spec) withDefaults() (Spec, error) {
	info, err := os.Stat(s.RootFS)
	if err != nil {
		return s, fmt.Errorf("rootfs: %w", err)
	}
	if !info.IsDir() {
		return s, fmt.Errorf("rootfs: %s is not a directory", s.RootFS)
	}
	if s.OutDir == "" {
		return s, errors.New("output: no folder given")
	}
	if _, err := os.Lstat(s.OutDir); err == nil {
		return s, fmt.Errorf("output: %s already exists", s.OutDir)
	}
	if s.Epoch <= 0 {
		return s, errors.New("no epoch (SOURCE_DATE_EPOCH) given")
	}
	if len(s.Formats) == 0 {
		s.Formats = []Format{Container}
	}
	for _, f := range s.Formats {
		if f != Container && f != VM {
			return s, fmt.Errorf("unknown format %q (container, vm)", f)
		}
	}
	if s.Architecture == "" {
		if s.Architecture, err = defaultArchitecture(); err != nil {
			return s, err
		}
	}
	if slices.Contains(s.Formats, VM) {
		// Before any output: without these the disk cannot boot.
		if _, err := findBootFiles(s.RootFS, s.Architecture); err != nil {
			return s, err
		}
	}
	if s.Properties.Name == "" {
		s.Properties.Name = fmt.Sprintf("%s-%s-%s", s.Properties.OS, s.Properties.Release, s.Architecture)
	}
	if s.Compression == "" {
		s.Compression = "xz"
	}
	if s.Progress == nil {
		s.Progress = progress.Discard()
	}
	return s, nil
}

func (s Spec) build(ctx context.Context, dir string) (*Manifest, error) {
	metaYAML, err := metadataYAML(s.Architecture, s.Epoch, s.Properties, slices.Contains(s.Formats, VM))
	if err != nil {
		return nil, err
	}
	// reused moves the caller's verified copy of name into the output.
	reused := func(name string) (bool, error) {
		src, ok := s.Reuse[name]
		if !ok {
			return false, nil
		}
		if err := os.Rename(src, filepath.Join(dir, name)); err != nil {
			return false, fmt.Errorf("reuse %s: %w", name, err)
		}
		return true, nil
	}
	if ok, err := reused(imagedir.MetadataFile); err != nil {
		return nil, err
	} else if !ok {
		if err := writeFile(filepath.Join(dir, imagedir.MetadataFile), func(w io.Writer) error {
			return writeMetadataTarball(w, metaYAML, s.Epoch)
		}); err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
	}
	tools := []string{}
	if slices.Contains(s.Formats, Container) {
		if ok, err := reused(imagedir.SquashfsFile); err != nil {
			return nil, err
		} else if !ok {
			if err := writeSquashfs(ctx, s.Progress, s.RootFS, filepath.Join(dir, imagedir.SquashfsFile), s.Compression, s.Epoch); err != nil {
				return nil, err
			}
		}
		if ok, err := reused(imagedir.UnifiedFile); err != nil {
			return nil, err
		} else if !ok {
			if err := s.writeUnified(ctx, filepath.Join(dir, imagedir.UnifiedFile), metaYAML); err != nil {
				return nil, fmt.Errorf("unified tarball: %w", err)
			}
		}
		tools = append(tools, "mksquashfs")
	}
	if slices.Contains(s.Formats, VM) {
		if ok, err := reused(imagedir.DiskFile); err != nil {
			return nil, err
		} else if !ok {
			if err := s.writeVMDisk(ctx, dir); err != nil {
				return nil, err
			}
		}
		tools = append(tools, "mkfs.ext4", "debugfs", "qemu-img")
	}
	return s.writeManifest(ctx, dir, tools)
}

func writeMetadataTarball(w io.Writer, metaYAML []byte, epoch int64) error {
	zw := pgz.NewWriter(w)
	tw := newReproducibleTar(zw, epoch, nil)
	if err := tw.writeGenerated(metadataEntries(metaYAML)); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// writeUnified writes LXD's unified container tarball: metadata.yaml,
// templates/ and the tree under rootfs/.
func (s Spec) writeUnified(ctx context.Context, path string, metaYAML []byte) error {
	task := s.Progress.Start("unified tarball", 0, "bytes")
	err := writeFile(path, func(w io.Writer) error {
		zw := pgz.NewWriter(w)
		tw := newReproducibleTar(zw, s.Epoch, task)
		if err := tw.writeGenerated(metadataEntries(metaYAML)); err != nil {
			return err
		}
		if err := tw.writeTree(ctx, s.RootFS, "rootfs"); err != nil {
			return err
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return zw.Close()
	})
	task.Done(err)
	return err
}

// writeFile creates path and fills it through a buffered writer.
func writeFile(path string, fill func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	bw := newBufWriter(f)
	err = fill(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncFiles flushes the folder's files to disk before the rename that
// publishes them, so a crash cannot leave a complete-looking folder with
// truncated files.
func syncFiles(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync %s: %w", e.Name(), err)
		}
	}
	return nil
}
