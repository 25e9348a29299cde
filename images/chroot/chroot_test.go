package chroot_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/chroot"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
)

// open opens a session on root and makes sure it is closed and nothing is
// left mounted when the test ends, also when it fails.
func open(t *testing.T, root string, opts chroot.Options) *chroot.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := chroot.Open(ctx, root, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// assertNothingMounted reads /proc/self/mountinfo itself (not through the
// code under test) and fails on any mount point under root.
func assertNothingMounted(t *testing.T, root string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == root || strings.HasPrefix(f[4], root+"/")) {
			t.Errorf("still mounted: %s", line)
		}
	}
}

// processesIn lists processes whose root directory is root.
func processesIn(root string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		r, err := os.Readlink("/proc/" + e.Name() + "/root")
		if err == nil && (r == root || strings.HasPrefix(r, root+"/")) {
			comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
			found = append(found, e.Name()+" "+strings.TrimSpace(string(comm)))
		}
	}
	return found
}

func TestInstallPackage(t *testing.T) {
	root := rootfstest.Dir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var log strings.Builder
	s := open(t, root, chroot.Options{Progress: progress.New(&log, progress.Plain)})

	// cron's postinst starts its daemon unless policy-rc.d forbids it.
	if err := s.Install(ctx, "cron"); err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(ctx, "dpkg", "-s", "cron")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "Status: install ok installed") {
		t.Errorf("dpkg -s cron in the chroot:\n%s", out)
	}
	if procs := processesIn(root); len(procs) > 0 {
		t.Errorf("services started in the tree despite policy-rc.d: %v", procs)
	}
	if !strings.Contains(log.String(), "apt-get install cron: done") {
		t.Errorf("no progress for the install:\n%s", log.String())
	}
	t.Logf("progress:\n%s", log.String())

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingMounted(t, root)
	// What a user checks in the finished tree.
	for _, gone := range []string{"usr/sbin/policy-rc.d", "etc/resolv.conf", "usr/sbin/policy-rc.d.ssbuild-saved"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left in the image (%v)", gone, err)
		}
	}
	lists, _ := filepath.Glob(filepath.Join(root, "var/lib/apt/lists/*_Packages*"))
	debs, _ := filepath.Glob(filepath.Join(root, "var/cache/apt/archives/*.deb"))
	if len(lists)+len(debs) > 0 {
		t.Errorf("apt lists or downloaded packages left in the image: %v %v", lists, debs)
	}
	pkgs, err := rootfs.Packages(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(pkgs, func(p rootfs.Package) bool { return p.Name == "cron" }) {
		t.Errorf("cron not in the image's package list after Close")
	}
}

func TestFailedInstallNamesStepAndUnmounts(t *testing.T) {
	root := rootfstest.Dir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := open(t, root, chroot.Options{})

	err := s.Install(ctx, "ssbuild-no-such-package")
	if err == nil {
		t.Fatal("installing a package that does not exist succeeded")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"install packages (ssbuild-no-such-package)", "apt-get", "Unable to locate package ssbuild-no-such-package"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingMounted(t, root)
}

// The tree's mirror is unreachable: the error names apt-get update and the
// source, not a later "Unable to locate package".
func TestInstallFromUnreachableMirror(t *testing.T) {
	root := rootfstest.Dir(t)
	s := open(t, root, chroot.Options{})
	if err := s.WriteFile("/etc/apt/sources.list", []byte("deb http://127.0.0.1:9/debian bookworm main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := s.Install(context.Background(), "cron")
	if err == nil {
		t.Fatal("install from an unreachable mirror succeeded")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"apt-get update", "http://127.0.0.1:9/debian"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingMounted(t, root)
}

// Ctrl-C (context cancel) in the middle of a command, with a process left
// running in the background inside the tree: Close still leaves no mount
// and no process behind.
func TestCancelledCommandLeavesNoMount(t *testing.T) {
	root := rootfstest.Dir(t)
	s := open(t, root, chroot.Options{})
	ctx := context.Background()
	// A daemon a package script might leave: its cwd keeps /proc busy.
	if _, err := s.Run(ctx, "sh", "-c", "cd /proc && (sleep 300 </dev/null >/dev/null 2>&1 &)"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	_, err := s.Run(short, "sleep", "60")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want the command ended by the context, got %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("cancel took %v", took)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingMounted(t, root)
	if procs := processesIn(root); len(procs) > 0 {
		t.Errorf("processes still running in the tree: %v", procs)
	}
}

// A crashed earlier run left proc mounted in the tree: Open clears it, and
// Close leaves nothing.
func TestOpenClearsStaleMounts(t *testing.T) {
	root := rootfstest.Dir(t)
	if err := syscall.Mount("proc", filepath.Join(root, "proc"), "proc", 0, ""); err != nil {
		t.Fatal(err)
	}
	s := open(t, root, chroot.Options{})
	out, err := s.Run(context.Background(), "cat", "/etc/debian_version")
	if err != nil || !strings.HasPrefix(string(out), "12.") {
		t.Errorf("cat /etc/debian_version in the chroot: %q, %v", out, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingMounted(t, root)
}

// A tree whose dev is a symlink out of it (a hostile or broken tarball) is
// refused before anything is mounted on the host.
func TestOpenRefusesDevSymlinkOutOfTree(t *testing.T) {
	root := rootfstest.Dir(t)
	outside := t.TempDir()
	if err := os.RemoveAll(filepath.Join(root, "dev")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "dev")); err != nil {
		t.Fatal(err)
	}
	s, err := chroot.Open(context.Background(), root, chroot.Options{})
	if err == nil {
		s.Close()
		t.Fatal("Open accepted a tree whose dev leads out of it")
	}
	if !strings.Contains(err.Error(), "mount proc, sys, dev") {
		t.Errorf("error does not name the step: %v", err)
	}
	assertNothingMounted(t, root)
	assertNothingMounted(t, outside)
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("Open wrote into %s outside the tree", outside)
	}
}

func TestWriteFile(t *testing.T) {
	root := rootfstest.Dir(t)
	s := open(t, root, chroot.Options{})
	if err := s.WriteFile("/etc/ssbuild/appliance.yaml", []byte("role: initiator\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(context.Background(), "stat", "-c", "%a %U %s", "/etc/ssbuild/appliance.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "600 root 16" {
		t.Errorf("stat in the chroot: %q, want 600 root 16", got)
	}

	// A symlink in the tree pointing at a host directory is not followed.
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "etc/escape")); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile("/etc/escape/owned", []byte("x"), 0o644); err == nil {
		t.Errorf("WriteFile through a symlink out of the tree succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "owned")); err == nil {
		t.Errorf("WriteFile wrote outside the tree")
	}

	// Machine identity made during the build does not stay in the image.
	s.WriteFile("/etc/ssh/ssh_host_ed25519_key", []byte("secret"), 0o600)
	s.WriteFile("/etc/ssh/ssh_host_ed25519_key.pub", []byte("public"), 0o644)
	s.WriteFile("/etc/machine-id", []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingMounted(t, root)
	keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	if len(keys) > 0 {
		t.Errorf("SSH host keys left in the image: %v", keys)
	}
	if id, err := os.ReadFile(filepath.Join(root, "etc/machine-id")); err != nil || len(id) != 0 {
		t.Errorf("etc/machine-id = %q (%v), want an empty file", id, err)
	}
	if data, err := os.ReadFile(filepath.Join(root, "etc/ssbuild/appliance.yaml")); err != nil || string(data) != "role: initiator\n" {
		t.Errorf("written file after Close: %q, %v", data, err)
	}
}

// Two trees from the same rootfs with the same packages installed are the
// same tree: contents, modes, owners, links and device numbers (times are
// normalised later, when the image is packed).
func TestSameInstallSameTree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var trees []map[string]string
	for i := 0; i < 2; i++ {
		root := rootfstest.Dir(t)
		s := open(t, root, chroot.Options{})
		if err := s.Install(ctx, "cron"); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		trees = append(trees, describeTree(t, root))
	}
	var diffs []string
	for p, a := range trees[0] {
		if b := trees[1][p]; a != b {
			diffs = append(diffs, fmt.Sprintf("%s: %q vs %q", p, a, b))
		}
	}
	for p := range trees[1] {
		if _, ok := trees[0][p]; !ok {
			diffs = append(diffs, p+": only in the second tree")
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%d differences between two builds of the same inputs:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 30)], "\n"))
	}
}

// describeTree maps each path under root to its type, mode, owner and
// content digest (or link target, or device number).
func describeTree(t *testing.T, root string) map[string]string {
	t.Helper()
	desc := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return err
		}
		what := fmt.Sprintf("%o %d:%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			what += fmt.Sprintf(" %x", sha256.Sum256(data))
		case syscall.S_IFLNK:
			target, _ := os.Readlink(path)
			what += " -> " + target
		case syscall.S_IFCHR, syscall.S_IFBLK:
			what += fmt.Sprintf(" dev %d", st.Rdev)
		}
		rel, _ := filepath.Rel(root, path)
		desc[rel] = what
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return desc
}
