// Package kerneltest gives boot tests one real Debian kernel: the bookworm
// rootfs from rootfstest with linux-image-amd64 and systemd-boot-efi
// installed in a chroot, once per machine, shared by every test binary of a
// run (a flock serialises the first install). Only what the image builders
// read is kept: boot/, the modules and systemd-boot's EFI binaries.
package kerneltest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
)

// key names the cache entry; change it when the packages change.
const key = "bookworm-linux-image-amd64-systemd-boot-efi-v1"

// Packages are installed into the rootfs for the tree.
var Packages = []string{"linux-image-amd64", "systemd-boot-efi"}

// Tree is a kernel tree: Root holds boot/vmlinuz-<Version>,
// lib/modules/<Version>/ and usr/lib/systemd/boot/efi/.
type Tree struct {
	Root    string
	Version string
}

// Vmlinuz is the kernel image's path.
func (k Tree) Vmlinuz() string { return filepath.Join(k.Root, "boot", "vmlinuz-"+k.Version) }

// SystemdBoot is systemd-boot's x86-64 EFI binary.
func (k Tree) SystemdBoot() string {
	return filepath.Join(k.Root, "usr/lib/systemd/boot/efi/systemd-bootx64.efi")
}

// Require skips (fails under CI) unless a kernel tree can be built.
func Require(t testing.TB) {
	t.Helper()
	rootfstest.Require(t)
}

// Get returns the shared kernel tree, building it on first use. Tests must
// not modify it.
func Get(t testing.TB) Tree {
	t.Helper()
	Require(t)
	dir := filepath.Join(os.TempDir(), "ssbuild-test-kernel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, key+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// Blocking: the first binary builds, the others wait for it. The kernel
	// drops the lock if that binary dies.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	// Under the lock, a temporary tree can only be a crashed build's.
	stale, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
	entry := filepath.Join(dir, key)
	if _, err := os.Stat(entry); errors.Is(err, os.ErrNotExist) {
		start := time.Now()
		if err := build(t, dir, entry); err != nil {
			t.Fatalf("kernel tree: %v", err)
		}
		t.Logf("kernel tree built in %v", time.Since(start).Round(time.Second))
	} else if err != nil {
		t.Fatal(err)
	}
	versions, err := os.ReadDir(filepath.Join(entry, "lib/modules"))
	if err != nil || len(versions) != 1 {
		t.Fatalf("kernel tree %s: want one kernel in lib/modules, got %v (%v)", entry, versions, err)
	}
	return Tree{Root: entry, Version: versions[0].Name()}
}

func build(t testing.TB, dir, entry string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root := rootfstest.Dir(t)
	s, err := chroot.Open(ctx, root, chroot.Options{})
	if err != nil {
		return err
	}
	if err := s.Install(ctx, Packages...); err != nil {
		s.Close()
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-"+key+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, sub := range []string{"boot", "usr/lib/modules", "usr/lib/systemd/boot/efi"} {
		dest := filepath.Join(tmp, filepath.Dir(sub))
		if err := os.MkdirAll(dest, 0o755); err != nil {
			return err
		}
		if _, err := command.Run(ctx, command.Cmd{Name: "cp", Args: []string{"-a", filepath.Join(root, sub), dest}}); err != nil {
			return fmt.Errorf("copy %s: %w", sub, err)
		}
	}
	if err := os.Symlink("usr/lib", filepath.Join(tmp, "lib")); err != nil {
		return err
	}
	return os.Rename(tmp, entry)
}
