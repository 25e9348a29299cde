package hostos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sovereign-stack/ssbuild/images/chroot"
)

// ZFSDKMS is the package that asks for a ZFS module: Debian ships ZFS as
// source only (contrib's zfs-dkms), so the host OS build compiles it for
// the tree's kernel.
const ZFSDKMS = "zfs-dkms"

// ZFSModulesPackage is the package the built modules are kept in: it
// provides zfs-modules (what zfsutils-linux and zfs-dkms stand for), so
// zfs-dkms, the kernel headers and the compiler can go.
const ZFSModulesPackage = "ssbuild-zfs-modules"

// zfsFinishKey names what buildZFS makes in the layer's cache key; change
// it when buildZFS changes.
const zfsFinishKey = "zfs-dkms module package v1"

// buildZFS compiles zfs-dkms for the tree's kernel, keeps the modules in a
// package of their own (ZFSModulesPackage) and purges zfs-dkms, the kernel
// headers, dkms and the compiler they pulled in: a cluster host needs the
// module, not a toolchain. A kernel upgrade on the host then needs a new
// host OS (the module is built for this kernel only).
func buildZFS(ctx context.Context, s *chroot.Session) error {
	kver, err := kernelVersion(s.Root())
	if err != nil {
		return err
	}
	// What the build pulls in (headers, dkms, the compiler) is what goes
	// afterwards: exactly the packages that were not here before it.
	before, err := installedPackages(ctx, s)
	if err != nil {
		return err
	}
	if err := s.Install(ctx, "linux-headers-"+kver, ZFSDKMS); err != nil {
		return fmt.Errorf("build the ZFS module for %s: %w", kver, err)
	}
	// dkms installs the modules under updates/dkms; purging zfs-dkms
	// removes them there, so the package keeps them under extra/zfs.
	built := filepath.Join(s.Root(), "lib/modules", kver, "updates/dkms")
	ents, err := os.ReadDir(built)
	if err != nil {
		return fmt.Errorf("zfs-dkms built no module for %s (%w): see the apt output above", kver, err)
	}
	var mods []string
	for _, e := range ents {
		if strings.Contains(e.Name(), ".ko") {
			mods = append(mods, e.Name())
		}
	}
	if !slices.ContainsFunc(mods, func(n string) bool { return strings.HasPrefix(n, "zfs.ko") }) {
		return fmt.Errorf("zfs-dkms built no zfs.ko for %s (found %v)", kver, mods)
	}
	version, err := s.Run(ctx, "dpkg-query", "-W", "-f=${Version}", ZFSDKMS)
	if err != nil {
		return fmt.Errorf("version of %s: %w", ZFSDKMS, err)
	}
	pkg := "/var/tmp/" + ZFSModulesPackage
	for _, m := range mods {
		data, err := os.ReadFile(filepath.Join(built, m))
		if err != nil {
			return err
		}
		if err := s.WriteFile(filepath.Join(pkg, "lib/modules", kver, "extra/zfs", m), data, 0o644); err != nil {
			return err
		}
	}
	control := fmt.Sprintf(`Package: %s
Version: %s
Architecture: amd64
Maintainer: ssbuild <ssbuild@localhost>
Provides: zfs-modules (= %s)
Depends: linux-image-%s
Section: kernel
Priority: optional
Description: OpenZFS kernel modules built by ssbuild for %s
 Built from zfs-dkms %s while the host OS was made, so the host needs no
 compiler. A new kernel needs a new host OS.
`, ZFSModulesPackage, version, version, kver, kver, version)
	if err := s.WriteFile(pkg+"/DEBIAN/control", []byte(control), 0o644); err != nil {
		return err
	}
	postinst := "#!/bin/sh\nset -e\ndepmod -a " + kver + "\n"
	if err := s.WriteFile(pkg+"/DEBIAN/postinst", []byte(postinst), 0o755); err != nil {
		return err
	}
	deb := pkg + ".deb"
	run := func(argv ...string) error {
		if out, err := s.Run(ctx, argv...); err != nil {
			return fmt.Errorf("ZFS module package: %s: %w\n%s", strings.Join(argv, " "), err, out)
		}
		return nil
	}
	if err := run("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", pkg, deb); err != nil {
		return err
	}
	if err := run("dpkg", "-i", deb); err != nil {
		return err
	}
	after, err := installedPackages(ctx, s)
	if err != nil {
		return err
	}
	purge := []string{"apt-get", "purge", "-y"}
	for _, p := range after {
		if !slices.Contains(before, p) && p != ZFSModulesPackage {
			purge = append(purge, p)
		}
	}
	for _, argv := range [][]string{purge, {"rm", "-rf", pkg, deb, "/var/lib/dkms"}, {"depmod", "-a", kver}} {
		if err := run(argv...); err != nil {
			return err
		}
	}
	// What a host must not carry: a compiler (and what would call it).
	for _, tool := range []string{"usr/bin/gcc", "usr/bin/cc", "usr/bin/make", "usr/sbin/dkms"} {
		if _, err := os.Lstat(filepath.Join(s.Root(), tool)); err == nil {
			return fmt.Errorf("/%s is still in the host OS after the ZFS build; remove the package that brings it from installer.packages", tool)
		}
	}
	return nil
}

// installedPackages lists the tree's installed packages (name:arch where
// dpkg says so).
func installedPackages(ctx context.Context, s *chroot.Session) ([]string, error) {
	out, err := s.Run(ctx, "dpkg-query", "-W", "-f=${db:Status-Abbrev} ${binary:Package}\n")
	if err != nil {
		return nil, fmt.Errorf("list installed packages: %w", err)
	}
	var pkgs []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "ii" {
			pkgs = append(pkgs, f[1])
		}
	}
	return pkgs, nil
}
