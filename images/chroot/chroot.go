// Package chroot customises a root filesystem from the inside: it mounts
// proc, sys and a private dev, keeps services from starting, gives the tree
// the build machine's DNS, runs apt-get and other tools under chroot(8), and
// undoes all of it on Close, whatever happened in between.
package chroot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/steps"
)

// Options tune a session.
type Options struct {
	// Progress receives long steps (package installs). Nil: none.
	Progress *progress.Reporter
	// InstallRecommends makes Install pull Recommends too; images are lean
	// by default and recipes list what they need.
	InstallRecommends bool
	// Env adds KEY=value entries to the clean environment commands get.
	Env []string
}

// Session is an open chroot: mounts made, policy in place. Close it.
type Session struct {
	root     string
	files    *os.Root // confines file writes to the tree, symlinks included
	opts     Options
	mounted  []string // in mount order; unmounted in reverse
	restores []restore
	opened   bool // Open finished: Close also cleans the tree for the image

	closeOnce sync.Once
	closeErr  error
}

// restore undoes one change to a file in the tree.
type restore struct {
	name string
	undo func() error
}

// Open prepares root for commands. On error nothing stays mounted or
// changed. Mounts left under root by a crashed earlier run are detached
// first, so a re-run converges.
func Open(ctx context.Context, root string, opts Options) (*Session, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if abs == "/" {
		return nil, errors.New("chroot: refusing to use the build machine's own / as the tree")
	}
	if _, err := os.Stat(filepath.Join(abs, "usr/bin")); err != nil {
		return nil, fmt.Errorf("chroot %s: not a root filesystem: %w", abs, err)
	}
	if err := mounts.UnmountAll(abs); err != nil {
		return nil, fmt.Errorf("chroot %s: clear stale mounts: %w", abs, err)
	}
	files, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("chroot %s: %w", abs, err)
	}
	s := &Session{root: abs, files: files, opts: opts}
	do := func(f func() error) func(context.Context) error { return func(context.Context) error { return f() } }
	err = steps.Runner{Stage: "chroot " + abs}.Run(ctx,
		steps.Step{Name: "mount proc, sys, dev", Run: do(s.mountAll)},
		steps.Step{Name: "install policy-rc.d", Run: do(s.blockServices)},
		steps.Step{Name: "set up resolv.conf", Run: do(s.provideDNS)})
	if err != nil {
		return nil, errors.Join(err, s.Close())
	}
	s.opened = true
	return s, nil
}

// Root is the root filesystem's path on the build machine.
func (s *Session) Root() string { return s.root }

// Run runs argv inside the chroot with a clean environment and returns its
// standard output. Errors carry the tool's stderr.
func (s *Session) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return s.RunWith(ctx, command.Cmd{}, argv...)
}

// RunWith is Run with c's Stdin, Stdout and Log wired to the command (to
// stream data in or out); c's Name, Args and Env are set by the session.
func (s *Session) RunWith(ctx context.Context, c command.Cmd, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("chroot: no command")
	}
	// env -i: the build machine's environment (TMPDIR, LANG, PATH ...) means
	// nothing inside the tree and must not leak into the image.
	args := append([]string{"-i"}, s.env()...)
	args = append(args, "chroot", s.root)
	c.Name, c.Env = "env", nil
	c.Args = append(args, argv...)
	out, err := command.Run(ctx, c)
	if err != nil {
		return out, fmt.Errorf("in chroot %s: %s: %w", s.root, argv[0], err)
	}
	return out, nil
}

func (s *Session) env() []string {
	return append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"LC_ALL=C",
		"DEBIAN_FRONTEND=noninteractive",
		"DEBCONF_NONINTERACTIVE_SEEN=true",
	}, s.opts.Env...)
}

// WriteFile writes a file into the tree (path as seen inside it), creating
// parent directories. Symlinks that would lead out of the tree are refused.
func (s *Session) WriteFile(path string, data []byte, perm fs.FileMode) error {
	name := strings.TrimPrefix(filepath.Clean("/"+path), "/")
	if err := s.files.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return fmt.Errorf("write %s into %s: %w", path, s.root, err)
	}
	if err := s.files.WriteFile(name, data, perm); err != nil {
		return fmt.Errorf("write %s into %s: %w", path, s.root, err)
	}
	// WriteFile's perm is filtered by the umask; the image wants it exact.
	if err := s.files.Chmod(name, perm); err != nil {
		return fmt.Errorf("write %s into %s: %w", path, s.root, err)
	}
	return nil
}

// Close undoes the session: restores resolv.conf and policy-rc.d, removes
// apt's caches, lists and logs and the machine identity packages generated
// (SSH host keys, machine-id), stops any process still running in the tree and
// unmounts everything under it (lazily when busy). It always tries every
// step and is safe to call more than once.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		for i := len(s.restores) - 1; i >= 0; i-- {
			if err := s.restores[i].undo(); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", s.restores[i].name, err))
			}
		}
		if s.opened { // a tree Open refused is left as it was
			if err := s.cleanApt(); err != nil {
				errs = append(errs, err)
			}
			if err := s.removeMachineIdentity(); err != nil {
				errs = append(errs, err)
			}
			if err := s.removeBuildLogs(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := killProcessesIn(s.root); err != nil {
			errs = append(errs, err)
		}
		for i := len(s.mounted) - 1; i >= 0; i-- {
			if err := mounts.Unmount(s.mounted[i]); err != nil {
				errs = append(errs, err)
			}
		}
		// Anything mounted under the tree by a tool we ran (binfmt_misc by a
		// postinst, ...) goes too.
		if err := mounts.UnmountAll(s.root); err != nil {
			errs = append(errs, err)
		}
		s.files.Close()
		if len(errs) > 0 {
			s.closeErr = fmt.Errorf("chroot %s: close: %w", s.root, errors.Join(errs...))
		}
	})
	return s.closeErr
}
