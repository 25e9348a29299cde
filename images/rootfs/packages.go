package rootfs

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sovereign-stack/ssbuild/internal/command"
)

// Package is one installed Debian package.
type Package struct {
	Name, Version, Arch string
}

// Packages lists the packages installed in the tree at root, read from its
// own dpkg database (no chroot or mounts needed), sorted by name: the
// package list of a build manifest.
func Packages(ctx context.Context, root string) ([]Package, error) {
	out, err := command.Run(ctx, command.Cmd{Name: "dpkg-query", Args: []string{
		"--admindir=" + filepath.Join(root, "var/lib/dpkg"),
		"--show", "--showformat=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"}})
	if err != nil {
		return nil, fmt.Errorf("list packages in %s: %w", root, err)
	}
	var pkgs []Package
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		// "ii " is installed; removed-but-configured ("rc") and the like are not.
		if len(f) != 4 || strings.TrimSpace(f[0]) != "ii" {
			continue
		}
		pkgs = append(pkgs, Package{Name: f[1], Version: f[2], Arch: f[3]})
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	return pkgs, nil
}
