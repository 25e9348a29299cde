package chroot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// mountAll mounts what package scripts expect: proc, a read-only sysfs and a
// private /dev. /dev is a fresh tmpfs with the usual nodes, not a bind of the
// host's: a postinst then cannot touch host disks, and nothing can propagate
// back onto the host's /dev.
func (s *Session) mountAll() error {
	const nodev = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC
	if err := s.mount("proc", "proc", "proc", nodev, ""); err != nil {
		return err
	}
	if err := s.mount("sysfs", "sys", "sysfs", nodev|syscall.MS_RDONLY, ""); err != nil {
		return err
	}
	if err := s.mount("tmpfs", "dev", "tmpfs", syscall.MS_NOSUID|syscall.MS_NOEXEC, "mode=755,size=64m"); err != nil {
		return err
	}
	if err := s.populateDev(); err != nil {
		return err
	}
	if err := s.mount("devpts", "dev/pts", "devpts", syscall.MS_NOSUID|syscall.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"); err != nil {
		return err
	}
	return s.mount("tmpfs", "dev/shm", "tmpfs", nodev, "mode=1777")
}

// mount mounts onto rel (inside the tree), which must be a real directory
// in the tree: a symlink there (dev -> /dev in a hostile tarball) would
// otherwise put the mount on the host.
func (s *Session) mount(source, rel, fstype string, flags uintptr, data string) error {
	target := filepath.Join(s.root, rel)
	if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	info, err := os.Lstat(target)
	if err != nil {
		return err
	}
	if !info.IsDir() {
		return fmt.Errorf("mount %s: %s is not a directory in the tree", fstype, target)
	}
	if real, err := filepath.EvalSymlinks(target); err != nil || real != target {
		return fmt.Errorf("mount %s: %s leads out of the tree (to %s)", fstype, target, real)
	}
	if err := syscall.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	s.mounted = append(s.mounted, target)
	return nil
}

func (s *Session) populateDev() error {
	dev := filepath.Join(s.root, "dev")
	nodes := []struct {
		name         string
		major, minor uint32
	}{
		{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
		{"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
	}
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, n := range nodes {
		devnum := int((n.major << 8) | (n.minor & 0xff) | ((n.minor &^ 0xff) << 12))
		if err := syscall.Mknod(filepath.Join(dev, n.name), syscall.S_IFCHR|0o666, devnum); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", n.name, err)
		}
	}
	links := map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx",
	}
	for name, to := range links {
		if err := os.Symlink(to, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// policyRCD is consulted by invoke-rc.d and deb-systemd-invoke; 101 means
// "action not allowed", so installed services are not started in the build.
const policyRCD = "usr/sbin/policy-rc.d"

func (s *Session) blockServices() error {
	return s.replaceFile(policyRCD, []byte("#!/bin/sh\n# ssbuild: no service starts while the image is built\nexit 101\n"), 0o755)
}

// provideDNS gives apt in the tree the build machine's resolver. Whatever
// the tree had (often a symlink into /run, or nothing) is put back on Close.
func (s *Session) provideDNS() error {
	data, err := os.ReadFile("/etc/resolv.conf")
	if errors.Is(err, os.ErrNotExist) {
		return nil // no resolver on the host: apt will say so if it needs one
	}
	if err != nil {
		return err
	}
	return s.replaceFile("etc/resolv.conf", data, 0o644)
}

// replaceFile puts content at name for the session's lifetime. What was
// there (file or symlink) is moved aside, not followed, and moved back on
// Close; if the file is gone or changed by then (a package took it over),
// the package's version stays.
func (s *Session) replaceFile(name string, content []byte, perm os.FileMode) error {
	saved := name + ".ssbuild-saved"
	_, err := s.files.Lstat(name)
	hadOld := err == nil
	if hadOld {
		if err := s.files.Rename(name, saved); err != nil {
			return err
		}
	}
	undo := func() error {
		cur, err := s.files.ReadFile(name)
		ours := err == nil && string(cur) == string(content)
		if ours || errors.Is(err, os.ErrNotExist) {
			if ours {
				if err := s.files.Remove(name); err != nil {
					return err
				}
			}
			if hadOld {
				return s.files.Rename(saved, name)
			}
			return nil
		}
		if hadOld {
			return s.files.Remove(saved)
		}
		return nil
	}
	s.restores = append(s.restores, restore{name: name, undo: undo})
	if err := s.files.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	if err := s.files.WriteFile(name, content, perm); err != nil {
		return err
	}
	return s.files.Chmod(name, perm)
}

// cleanApt removes what apt downloaded: package lists and archives belong
// to the build, not the image (the image's first apt-get update fetches
// fresh lists).
func (s *Session) cleanApt() error {
	var errs []error
	for _, dir := range []string{"var/lib/apt/lists", "var/cache/apt"} {
		entries, err := fs.ReadDir(s.files.FS(), dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			if e.Name() == "lock" {
				continue
			}
			if err := s.files.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// apt expects these to exist.
	for _, dir := range []string{"var/lib/apt/lists/partial", "var/cache/apt/archives/partial"} {
		if err := s.files.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("clean apt caches: %w", errors.Join(errs...))
	}
	return nil
}

// removeBuildLogs removes the logs apt and dpkg wrote during the build (and
// ldconfig's aux-cache):
// they describe this build (with its times), not the image, and would make
// two builds of the same inputs differ.
func (s *Session) removeBuildLogs() error {
	var errs []error
	// ldconfig's aux-cache records inode numbers and times of the build
	// machine: it differs on every build and ldconfig rebuilds it anyway.
	for _, pattern := range []string{"var/log/apt/*.log", "var/log/dpkg.log", "var/log/alternatives.log",
		"var/cache/ldconfig/aux-cache"} {
		logs, err := fs.Glob(s.files.FS(), pattern)
		if err != nil {
			errs = append(errs, err)
		}
		for _, l := range logs {
			if err := s.files.Remove(l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove build logs: %w", errors.Join(errs...))
	}
	return nil
}

// removeMachineIdentity removes what makes one machine unique and was
// generated at install time (openssh-server makes host keys in its
// postinst, systemd a machine-id): every instance of the image would share
// them. An empty machine-id makes systemd generate one on first boot; SSH
// host keys must be generated there too (cloud-init does, or ssh-keygen -A).
func (s *Session) removeMachineIdentity() error {
	var errs []error
	keys, err := fs.Glob(s.files.FS(), "etc/ssh/ssh_host_*")
	if err != nil {
		errs = append(errs, err)
	}
	for _, k := range keys {
		if err := s.files.Remove(k); err != nil {
			errs = append(errs, err)
		}
	}
	if info, err := s.files.Lstat("etc/machine-id"); err == nil && info.Mode().IsRegular() {
		if err := s.files.WriteFile("etc/machine-id", nil, 0o444); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range []string{"var/lib/dbus/machine-id", "var/lib/systemd/random-seed"} {
		// dbus's is usually a symlink to /etc/machine-id: keep that.
		if info, err := s.files.Lstat(name); err == nil && info.Mode().IsRegular() {
			if err := s.files.Remove(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove machine identity: %w", errors.Join(errs...))
	}
	return nil
}

// killProcessesIn kills processes whose root directory is in the tree (a
// gpg-agent or daemon a package script left running), so the unmounts that
// follow are not busy and nothing keeps writing into the image.
func killProcessesIn(root string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := processesIn(root)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still running in %s: %v", root, pids)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func processesIn(root string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		r, err := os.Readlink("/proc/" + e.Name() + "/root")
		if err != nil {
			continue
		}
		if r == root || strings.HasPrefix(r, root+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}
