package chroot

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Install runs apt-get update and then installs packages, non-interactively,
// keeping existing config files. Errors name the step and carry apt's
// message (e.g. "E: Unable to locate package ...").
func (s *Session) Install(ctx context.Context, packages ...string) error {
	if len(packages) == 0 {
		return nil
	}
	rep := s.opts.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	list := strings.Join(packages, " ")

	task := rep.Start("apt-get update", 0, "")
	// --error-on=any: without it apt-get update exits 0 when a source
	// cannot be fetched, and the failure shows up later as a confusing
	// "Unable to locate package".
	_, err := s.RunWith(ctx, command.Cmd{}, "apt-get", "update", "-q", "--error-on=any")
	task.Done(err)
	if err != nil {
		return fmt.Errorf("install packages (%s): apt-get update: %w", list, err)
	}

	args := []string{"install", "-y", "-q",
		"-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"}
	if !s.opts.InstallRecommends {
		args = append(args, "--no-install-recommends")
	}
	args = append(args, "--")
	args = append(args, packages...)
	// apt prints one "Setting up" line per configured package, dependencies
	// included, so the total is not known up front.
	task = rep.Start("apt-get install "+list, 0, "packages set up")
	_, err = s.RunWith(ctx, command.Cmd{Stdout: &prefixCounter{prefix: []byte("Setting up "), task: task}},
		append([]string{"apt-get"}, args...)...)
	task.Done(err)
	if err != nil {
		return fmt.Errorf("install packages (%s): %w", list, err)
	}
	return nil
}

// prefixCounter counts output lines that start with prefix.
type prefixCounter struct {
	prefix []byte
	task   *progress.Task
	rest   []byte
}

func (p *prefixCounter) Write(b []byte) (int, error) {
	p.rest = append(p.rest, b...)
	for {
		i := bytes.IndexByte(p.rest, '\n')
		if i < 0 {
			break
		}
		if bytes.HasPrefix(p.rest[:i], p.prefix) {
			p.task.Add(1)
		}
		p.rest = p.rest[i+1:]
	}
	if len(p.rest) > 4096 {
		p.rest = p.rest[:0]
	}
	return len(b), nil
}
