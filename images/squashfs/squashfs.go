// Package squashfs runs mksquashfs for the image builders (the LXD
// rootfs, the installer's payload), reporting the files it has packed.
// What goes into the image (owners, times, compression) is the caller's
// choice of arguments.
package squashfs

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strconv"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Make runs mksquashfs with args (sources, output, options) as the
// progress task named task, compressing on every core this process may
// use (-processors), unless args set a count. The image does not depend on
// the count: mksquashfs writes blocks and fragments in file order whatever
// thread compressed them (TestSameBytesWithAnyProcessorCount).
func Make(ctx context.Context, rep *progress.Reporter, task string, args []string) error {
	if rep == nil {
		rep = progress.Discard()
	}
	args = withProcessors(args)
	t := rep.Start(task, 0, "files")
	cmd := command.Cmd{Name: "mksquashfs", Args: args, Stdout: &barProgress{task: t}}
	if slices.Contains(args, "-mkfs-time") || slices.Contains(args, "-all-time") {
		// The arguments carry the epoch; mksquashfs refuses to run when
		// SOURCE_DATE_EPOCH is set too, from the user's environment or
		// from a FAT being written meanwhile (gptimage.WithEpoch).
		cmd.Unset = []string{"SOURCE_DATE_EPOCH"}
	}
	_, err := command.Run(ctx, cmd)
	t.Done(err)
	if err != nil {
		return fmt.Errorf("squashfs: %w", err)
	}
	return nil
}

// Processors is the core count Make gives mksquashfs: the processors this
// process may run on (its CPU affinity), which mksquashfs's own default,
// the online processors, ignores.
func Processors() int { return runtime.NumCPU() }

func withProcessors(args []string) []string {
	if slices.Contains(args, "-processors") {
		return args
	}
	return append(slices.Clip(args), "-processors", strconv.Itoa(Processors()))
}

// barProgress reads mksquashfs's bar, "\r[===  ] 1700/6300  26%", from its
// standard output.
type barProgress struct {
	task *progress.Task
	line []byte
}

var bar = regexp.MustCompile(`\]\s+(\d+)/(\d+)\s+\d+%`)

func (s *barProgress) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != '\r' && b != '\n' {
			s.line = append(s.line, b)
			continue
		}
		if m := bar.FindSubmatch(s.line); m != nil {
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
