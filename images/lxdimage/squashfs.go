package lxdimage

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"

	"github.com/sovereign-stack/ssbuild/internal/command"
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

// writeSquashfs packs dir into out with mksquashfs, reporting the files
// done from mksquashfs's progress bar.
func writeSquashfs(ctx context.Context, rep *progress.Reporter, dir, out, comp string, epoch int64) error {
	task := rep.Start("squashfs", 0, "files")
	_, err := command.Run(ctx, command.Cmd{
		Name:   "mksquashfs",
		Args:   squashfsArgs(dir, out, comp, epoch),
		Stdout: &squashfsProgress{task: task},
	})
	task.Done(err)
	if err != nil {
		return fmt.Errorf("squashfs: %w", err)
	}
	return nil
}

// squashfsProgress reads mksquashfs's bar, "\r[===  ] 1700/6300  26%",
// from its standard output.
type squashfsProgress struct {
	task *progress.Task
	line []byte
}

var squashfsBar = regexp.MustCompile(`\]\s+(\d+)/(\d+)\s+\d+%`)

func (s *squashfsProgress) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != '\r' && b != '\n' {
			s.line = append(s.line, b)
			continue
		}
		if m := squashfsBar.FindSubmatch(s.line); m != nil {
			// The total (m[2]) grows while mksquashfs scans, so only the
			// count done is reported.
			done, _ := strconv.ParseInt(string(m[1]), 10, 64)
			s.task.Set(done)
		}
		s.line = s.line[:0]
	}
	if len(s.line) > 4096 { // not a progress bar: do not grow without bound
		s.line = bytes.Clone(s.line[len(s.line)-256:])
	}
	return len(p), nil
}
