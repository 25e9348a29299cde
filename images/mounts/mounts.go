// Package mounts finds and undoes mounts under a root filesystem being built,
// and removes such a tree only once nothing is mounted in it: a bind mount or
// a proc/dev mount left under a rootfs must never turn its removal into the
// removal of host files.
package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Under returns the mount points at or below dir, as listed in
// /proc/self/mountinfo, deepest first (the order they must be unmounted in).
func Under(dir string) ([]string, error) {
	dir, err := realPath(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// Fields: id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	// Deepest first; the same mount point may appear twice when stacked,
	// and each appearance needs its own unmount.
	sort.SliceStable(found, func(i, j int) bool {
		return strings.Count(found[i], "/") > strings.Count(found[j], "/")
	})
	return found, nil
}

// Unmount unmounts target, detaching it lazily when it is busy (a process
// still has a file open in it), so the mount is gone from the tree at once.
func Unmount(target string) error {
	err := syscall.Unmount(target, 0)
	if errors.Is(err, syscall.EBUSY) {
		err = syscall.Unmount(target, syscall.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, syscall.EINVAL) { // EINVAL: not a mount point (any more)
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// UnmountAll unmounts everything at or below dir, deepest first, and checks
// that nothing is left.
func UnmountAll(dir string) error {
	if err := refuseWholeMachine(dir); err != nil {
		return err
	}
	var errs []error
	// Two rounds: a lazy detach of a parent also takes its children, and a
	// mount made under dir while we worked gets a second chance.
	for round := 0; round < 2; round++ {
		list, err := Under(dir)
		if err != nil {
			return err
		}
		if len(list) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, mp := range list {
			if err := Unmount(mp); err != nil {
				errs = append(errs, err)
			}
		}
	}
	left, err := Under(dir)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("still mounted under %s: %s", dir, strings.Join(left, ", ")))
		return errors.Join(errs...)
	}
	return nil
}

// RemoveTree unmounts anything left under dir and removes it. It refuses to
// remove anything while a mount remains, since removing through a bind mount
// of /dev or / would delete host files.
func RemoveTree(dir string) error {
	if err := refuseWholeMachine(dir); err != nil {
		return err
	}
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := UnmountAll(dir); err != nil {
		return fmt.Errorf("not removing %s: %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// refuseWholeMachine guards UnmountAll and RemoveTree against a tree path
// that resolves to / (an empty setting joined into a path, a "..").
func refuseWholeMachine(dir string) error {
	if real, err := realPath(dir); err != nil || real == "/" {
		return fmt.Errorf("refusing to unmount or remove everything under %q", dir)
	}
	return nil
}

// realPath makes dir absolute with symlinks resolved, as mountinfo shows it.
func realPath(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real, nil
	}
	return filepath.Clean(abs), nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
