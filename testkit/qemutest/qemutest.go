// Package qemutest boots test machines under qemu (TCG) with OVMF for the
// tests that run the installer stick and the installed hosts: a machine's
// sticks, disks, NIC and firmware variables, the boot until a marker on
// the serial console, sparse disks, and the static ssbuild binary and its
// installer build.
package qemutest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// OVMF's firmware and its variable store template (Debian's ovmf).
const OVMFCode, OVMFVars = "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"

// Require skips (fails under CI) without qemu or OVMF.
func Require(t *testing.T) {
	t.Helper()
	testenv.RequireTools(t, "qemu-system-x86_64")
	if _, err := os.Stat(OVMFVars); err != nil {
		if testenv.InCI() {
			t.Fatalf("CI=true but %v (install ovmf)", err)
		}
		t.Skip(err)
	}
}

// Machine is one boot of a test machine under TCG with OVMF: the stick
// (if any) on USB, the disks on virtio in order (vda, vdb, ...), and a NIC
// with MAC (none when empty). Vars is the firmware's variable store, kept
// from boot to boot as a real machine keeps its own; empty: a fresh copy.
type Machine struct {
	Stick string
	Disks []string
	MAC   string
	Vars  string
	USB   []string // drives on USB that are not the stick (an external disk), not flagged removable
	// SSH, when not 0, forwards this port of 127.0.0.1 to the guest's port
	// 22 (user networking, restricted: the guest reaches nothing else).
	SSH    int
	Memory int // MiB; 0: 1024
	CPUs   int // 0: 1
}

// Args are qemu's options for m (after Until's own).
func (m Machine) Args(t *testing.T) []string {
	t.Helper()
	varsCopy := m.Vars
	if varsCopy == "" {
		varsCopy = filepath.Join(t.TempDir(), "OVMF_VARS.fd")
	}
	if _, err := os.Stat(varsCopy); err != nil {
		vars, err := os.ReadFile(OVMFVars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(varsCopy, vars, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mem, cpus := m.Memory, m.CPUs
	if mem == 0 {
		mem = 1024
	}
	if cpus == 0 {
		cpus = 1
	}
	args := []string{"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,file=" + Path(varsCopy)}
	if m.Stick != "" || len(m.USB) > 0 {
		args = append(args, "-device", "qemu-xhci")
	}
	if m.Stick != "" {
		// snapshot=on: the guest cannot change the shared stick.
		args = append(args, "-drive", "if=none,id=stick,format=raw,snapshot=on,file="+Path(m.Stick),
			"-device", "usb-storage,drive=stick")
	}
	for i, d := range m.USB {
		id := "usb" + strconv.Itoa(i)
		args = append(args, "-drive", "if=none,id="+id+",format=raw,file="+Path(d), "-device", "usb-storage,drive="+id+",removable=off")
	}
	for _, d := range m.Disks {
		args = append(args, "-drive", "if=virtio,format=raw,file="+Path(d))
	}
	if m.MAC != "" {
		netdev := "user,id=n0,restrict=on"
		if m.SSH != 0 {
			netdev += ",hostfwd=tcp:127.0.0.1:" + strconv.Itoa(m.SSH) + "-:22"
		}
		// e1000 without its option ROM: the installer's e1000 driver sees
		// the MAC, the firmware has no driver and so no network boot to try.
		args = append(args, "-netdev", netdev, "-device", "e1000,netdev=n0,romfile=,mac="+m.MAC)
	}
	return args
}

// Path escapes a file name for a qemu option list, where a comma (which
// t.TempDir keeps from a subtest's name) separates options.
func Path(p string) string { return strings.ReplaceAll(p, ",", ",,") }

// Until boots qemu (TCG, serial on stdout) until the serial output
// matches marker (nil: until qemu exits) or timeout passes, then kills it
// by its PID. found is whether the marker matched, or with a nil marker
// whether qemu exited by itself.
func Until(t *testing.T, timeout time.Duration, marker *regexp.Regexp, args ...string) (serial string, found bool) {
	t.Helper()
	b := Start(t, args...)
	return b.Wait(timeout, marker)
}

// Boot is a running qemu.
type Boot struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// Start starts qemu (TCG, serial on stdout); it is killed by its PID when
// the test ends.
func Start(t testing.TB, args ...string) *Boot {
	t.Helper()
	base := []string{"-accel", "tcg", "-machine", "q35", "-nic", "none", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot"}
	b := &Boot{cmd: exec.Command("qemu-system-x86_64", append(base, args...)...), out: &lockedBuffer{}, exited: make(chan struct{})}
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	go func() { _ = b.cmd.Wait(); close(b.exited) }()
	t.Cleanup(b.Stop)
	return b
}

// Stop kills qemu by its PID and waits for it.
func (b *Boot) Stop() { _ = b.cmd.Process.Kill(); <-b.exited }

// Serial is the console output so far.
func (b *Boot) Serial() string { return b.out.String() }

// Wait waits until the serial output matches marker (nil: until qemu
// exits) or timeout passes; on a timeout or a match qemu is stopped.
func (b *Boot) Wait(timeout time.Duration, marker *regexp.Regexp) (serial string, found bool) {
	matched := func() bool { return marker != nil && marker.MatchString(b.out.String()) }
	deadline := time.After(timeout)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-b.exited:
			return b.out.String(), marker == nil || matched()
		case <-deadline:
			b.Stop()
			return b.out.String(), false
		case <-tick.C:
			if matched() {
				b.Stop()
				return b.out.String(), true
			}
		}
	}
}

// WaitFor is Wait that leaves qemu running on a match.
func (b *Boot) WaitFor(timeout time.Duration, marker *regexp.Regexp) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-b.exited:
			return marker.MatchString(b.out.String())
		case <-time.After(500 * time.Millisecond):
		}
		if marker.MatchString(b.out.String()) {
			return true
		}
	}
	return false
}

// lockedBuffer collects qemu's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// BlankDisk is a sparse file of size bytes.
func BlankDisk(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// NeverWritten fails unless the sparse file has no block allocated: a
// single byte written would allocate one.
func NeverWritten(t *testing.T, disk string) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(disk, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 0 {
		t.Errorf("%s was written: %d blocks allocated", filepath.Base(disk), st.Blocks)
	}
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// StaticSSBuild builds bin/ssbuild the way `make build` does (static), the
// binary that becomes the installer's /init and the host OS's ssbuild.
func StaticSSBuild(t *testing.T) string {
	t.Helper()
	testenv.RequireTools(t, "make", "gcc", "go")
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "ssbuild")
	cmd := exec.Command("make", "-C", strings.TrimSpace(string(root)), "build", "BIN="+bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	return bin
}

// BuildInstaller runs `bin installer` for recipe into out with the tests'
// shared cache and epoch, and fails the test unless it succeeds.
func BuildInstaller(t *testing.T, bin, recipe, out string, extra ...string) (stdout, stderr bytes.Buffer) {
	t.Helper()
	return BuildInstallerCache(t, bin, recipe, out, rootfstest.CacheDir(), extra...)
}

// BuildInstallerCache is BuildInstaller with the cache folder cache.
func BuildInstallerCache(t *testing.T, bin, recipe, out, cache string, extra ...string) (stdout, stderr bytes.Buffer) {
	t.Helper()
	start := time.Now()
	args := append([]string{"installer", "--recipe", recipe, "--out", out, "--cache", cache, "--epoch", "1700000000"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ssbuild installer: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("built in %v: %s", time.Since(start).Round(time.Second), stdout.String())
	return stdout, stderr
}
