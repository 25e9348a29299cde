package lxdimage

import (
	"context"
	"strconv"

	"github.com/sovereign-stack/ssbuild/images/squashfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// squashfsArgs are mksquashfs's arguments for a reproducible LXD rootfs:
// owners, modes, xattrs and device nodes are kept as they are in the tree
// (mksquashfs's defaults); every timestamp becomes the epoch.
func squashfsArgs(dir, out, comp string, epoch int64) []string {
	e := strconv.FormatInt(epoch, 10)
	return []string{dir, out, "-noappend", "-comp", comp, "-b", "1M", "-no-exports",
		"-reproducible", "-mkfs-time", e, "-all-time", e, "-xattrs",
		"-root-mode", "755", "-root-uid", "0", "-root-gid", "0"} // see rootDirMode
}

// writeSquashfs packs dir into out with mksquashfs.
func writeSquashfs(ctx context.Context, rep *progress.Reporter, dir, out, comp string, epoch int64) error {
	return squashfs.Make(ctx, rep, "squashfs", squashfsArgs(dir, out, comp, epoch))
}
