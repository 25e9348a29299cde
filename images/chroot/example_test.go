package chroot_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// The first stages of `ssbuild image`: a cached debootstrap, packages and
// files in a chroot, the package list for the manifest.
func Example() {
	// Ctrl-C must cancel the context, not kill the process: only then do
	// the deferred Close and the builder's cleanup run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep := progress.ForFile(os.Stderr, false)

	b := rootfs.Builder{CacheDir: "/var/cache/ssbuild", Progress: rep}
	res, err := b.Debootstrap(ctx, rootfs.Debootstrap{
		Suite:      "jammy",
		Mirror:     "http://archive.ubuntu.com/ubuntu",
		Keyring:    "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
		Variant:    "minbase",
		Components: []string{"main", "universe"},
	}, "/var/tmp/ssbuild-work/rootfs")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}

	s, err := chroot.Open(ctx, res.Dir, chroot.Options{Progress: rep})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer s.Close() // unmounts, also after an error or Ctrl-C
	if err := s.Install(ctx, "docker.io", "cloud-init", "openssh-server"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	if err := s.WriteFile("/etc/ssbuild/appliance.yaml", []byte("role: instance\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	if err := s.Close(); err != nil { // the error of the final cleanup matters
		fmt.Fprintln(os.Stderr, err)
		return
	}
	pkgs, _ := rootfs.Packages(ctx, res.Dir)
	fmt.Println(len(pkgs), "packages; debootstrap cache hit:", res.CacheHit)
}
