// Package installer assembles the USB installer image: a raw GPT disk
// image (dd it to a stick) that UEFI firmware boots through systemd-boot
// into the kernel and the installer initramfs (images/initramfs), whose
// init then installs the host from the payload partition.
//
// The image:
//
//	sector 0     protective MBR, GPT (disk and partition GUIDs derived from Name and Epoch)
//	1 MiB        partition 1 "SSBUILD-ESP": EFI system partition, FAT32 (go-diskfs,
//	             reproducible), volume label SSBUILD-ESP:
//	               EFI/BOOT/BOOTX64.EFI                 systemd-boot (removable-media path,
//	                                                   so no firmware boot entry is needed)
//	               loader/loader.conf                   default entry, no editor; no menu,
//	                                                   or MenuTimeout s with Spec.Menu
//	               loader/entries/ssbuild-installer.conf
//	               loader/entries/ssbuild-installer-<id>.conf  Spec.Menu, if any
//	               ssbuild/vmlinuz, ssbuild/initrd.img  the kernel and the installer initramfs
//	after it     partition 2 "SSBUILD-PAYLOAD": squashfs (mksquashfs, reproducible)
//	             holding the payload files under their names and SHA256SUMS, the
//	             sha256 of every other file in it (sha256sum -c format), and
//	             its signature, when Spec.SignManifest is set
//	end          backup GPT
//
// The installer finds its partitions by their GPT names (PARTLABEL). Build
// writes <Output> and SHA256SUMS next to it; each is complete or absent.
package installer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
)

// The stable names the installer and tests look for.
const (
	EntryFile  = "loader/entries/ssbuild-installer.conf"
	KernelFile = "ssbuild/vmlinuz"
	InitrdFile = "ssbuild/initrd.img"
)

// DefaultCmdline shows the installer on the screen (the last console= is
// /dev/console) and kernel messages on the serial port too.
const DefaultCmdline = "console=ttyS0,115200 console=tty0"

// PayloadFile is one file or directory of the payload partition.
type PayloadFile struct {
	// Name is its path in the payload, e.g. "os.img", "base-image",
	// "recipe.yaml", "appliance.yaml".
	Name string
	// Path is the file or directory on the build machine.
	Path string
	// SHA256, if set, is the digest of Path (a regular file) that the
	// caller computed over the bytes as it wrote or copied them (the
	// output cache does, verifying a cached file while restoring it): the
	// manifest takes it, and the file is not read again to hash it (the
	// payload's largest file, read a second time only for its digest).
	// It is trusted: a wrong one makes a stick whose installer refuses
	// the payload (its manifest check names the file).
	SHA256 string
}

// Spec says what goes into an installer image.
type Spec struct {
	// Name identifies the image: with Epoch it seeds the GUIDs, so
	// rebuilds match and different images differ.
	Name string
	// Epoch is every timestamp in the image (SOURCE_DATE_EPOCH).
	Epoch int64
	// Kernel is the kernel image (an EFI stub kernel, e.g. Debian's
	// /boot/vmlinuz-*), Initramfs the installer initramfs for it.
	Kernel    string
	Initramfs string
	// SystemdBoot is systemd-bootx64.efi from the OS root filesystem
	// (usr/lib/systemd/boot/efi/, package systemd-boot-efi).
	SystemdBoot string
	// Cmdline is the kernel command line; empty means DefaultCmdline.
	Cmdline string
	// Menu are boot menu entries besides the default one (e.g. one per
	// host, passing ssbuild.host=NAME); with any, the menu shows for
	// MenuTimeout seconds.
	Menu []MenuEntry
	// Payload are the files of the payload partition.
	Payload []PayloadFile
	// SignManifest, if set, signs the payload's manifest: what it returns
	// for the manifest's bytes is written beside it as ManifestSigName
	// (the installer's name for it, stick.ManifestSig), which the
	// manifest does not list: it cannot cover itself.
	SignManifest    func(manifest []byte) ([]byte, error)
	ManifestSigName string
	// Compression is mksquashfs's -comp for the payload, at the tool's
	// default level; empty: zstd at level 3.
	Compression string
	// Output is the image's path (…/installer.img).
	Output string
	// Progress reports the steps; nil: none.
	Progress *progress.Reporter
}

// Result describes a built image.
type Result struct {
	Size   int64
	SHA256 string
	// Partitions' sizes in bytes.
	ESPSize, PayloadSize int64
	IDs                  DiskIDs
}

// Build assembles the image at s.Output and writes SHA256SUMS next to it.
// The work happens in a temporary directory beside the output, removed at
// the end whatever happens.
func Build(ctx context.Context, s Spec) (Result, error) {
	var res Result
	if err := s.check(); err != nil {
		return res, err
	}
	if s.Progress == nil {
		s.Progress = progress.Discard()
	}
	outDir := filepath.Dir(s.Output)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	work, err := os.MkdirTemp(outDir, ".installer-")
	if err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	defer os.RemoveAll(work)

	files, espData, espSize, err := s.espLayout()
	if err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	// Two lines of work at once, each mostly one core's: the payload
	// (hash what has no given digest, then mksquashfs straight into its
	// partition's place in the image, -offset, so its bytes are written
	// once and never copied) and the ESP, in a file of its own. Then the
	// partition table and the ESP go in around the payload.
	esp := filepath.Join(work, "esp.img")
	img := filepath.Join(work, "image.img")
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		stage, err := s.stagePayload(gctx, work)
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		if err := createEmpty(img); err != nil {
			return err
		}
		// The disk takes the payload while mksquashfs still writes it,
		// rather than all at once at the final sync.
		stop := writeBehind(img)
		err = writeSquashfs(gctx, s.Progress, stage, img, espStart+espSize, s.Compression, s.Epoch)
		stop()
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := s.buildESP(gctx, esp, files, espData, espSize); err != nil {
			return fmt.Errorf("ESP: %w", err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	if res, err = s.writeDisk(ctx, img, esp, espSize); err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	// The image goes to disk while it is hashed: the one waits on the
	// disk, the other on a core.
	synced := make(chan error, 1)
	go func() { synced <- syncFile(img) }()
	sum, err := sha256File(ctx, s.Progress, img)
	if serr := <-synced; err == nil && serr != nil {
		return res, fmt.Errorf("installer image: %w", serr)
	}
	if err != nil {
		return res, fmt.Errorf("installer image: checksum: %w", err)
	}
	res.SHA256 = sum
	sums := filepath.Join(work, signature.ChecksumsFile)
	line := sum + "  " + filepath.Base(s.Output) + "\n"
	if err := writeSynced(sums, []byte(line)); err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	// The image first: a SHA256SUMS never names an image that is not there.
	if err := os.Rename(img, s.Output); err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	if err := os.Rename(sums, filepath.Join(outDir, signature.ChecksumsFile)); err != nil {
		return res, fmt.Errorf("installer image: %w", err)
	}
	return res, syncFile(outDir)
}

func (s Spec) check() error {
	if s.Output == "" || s.Name == "" {
		return fmt.Errorf("installer image: Output and Name are required")
	}
	for what, p := range map[string]string{"kernel": s.Kernel, "initramfs": s.Initramfs, "systemd-boot": s.SystemdBoot} {
		info, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("installer image: %s: %w", what, err)
		}
		if !info.Mode().IsRegular() {
			return fmt.Errorf("installer image: %s: %s is not a regular file", what, p)
		}
	}
	seen := map[string]bool{stick.Manifest: true}
	if s.SignManifest != nil {
		if n := s.ManifestSigName; n == "" || n == stick.Manifest || strings.ContainsAny(n, "/\n") || n == "." || n == ".." {
			return fmt.Errorf("installer image: manifest signature name %q: want a plain file name", n)
		}
		seen[s.ManifestSigName] = true
	}
	for _, f := range s.Payload {
		n := filepath.Clean(f.Name)
		if n == "." || filepath.IsAbs(n) || strings.HasPrefix(n, "..") || strings.Contains(n, "/") {
			return fmt.Errorf("installer image: payload name %q: want a plain name in the payload's root", f.Name)
		}
		if seen[n] {
			return fmt.Errorf("installer image: payload name %q used twice (or reserved)", f.Name)
		}
		seen[n] = true
		if _, err := os.Lstat(f.Path); err != nil {
			return fmt.Errorf("installer image: payload %s: %w", f.Name, err)
		}
	}
	return nil
}

// sha256File hashes path, reading the next chunk while the last one is
// hashed: on two cores the read costs next to nothing.
func sha256File(ctx context.Context, rep *progress.Reporter, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	task := rep.Start("sha256 "+filepath.Base(path), info.Size(), "bytes")
	h := sha256.New()
	err = pipelinedCopy(io.MultiWriter(h, task), ctxReader{ctx, f})
	task.Done(err)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// pipelinedCopy copies r to w, reading into one buffer while w takes the
// one before.
func pipelinedCopy(w io.Writer, r io.Reader) error {
	const size, count = 4 << 20, 3
	free := make(chan []byte, count)
	for range count {
		free <- make([]byte, size)
	}
	full := make(chan []byte, count)
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(full)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				full <- buf[:n]
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	for buf := range full {
		if _, err := w.Write(buf); err != nil {
			return err
		}
		free <- buf[:cap(buf)]
	}
	select {
	case err := <-readErr:
		return err
	default:
		return nil
	}
}

// createEmpty creates path as an empty file (0644 less the umask), which
// mksquashfs then fills: it keeps the file's mode.
func createEmpty(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
	if err != nil {
		return err
	}
	return f.Close()
}

// ctxReader stops a long copy when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func writeSynced(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	return syncFile(path)
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
