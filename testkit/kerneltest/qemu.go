package kerneltest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestInit builds testdata/testinit of images/initramfs as a static binary
// in the test's temp dir and returns its path. What it prints on the
// console: "testinit: SSBUILD-INIT-REACHED kernel=...", the modules it
// loaded, "testinit: block devices: ..." and "testinit: powering off".
func TestInit(t testing.TB) string {
	t.Helper()
	testenv.RequireTools(t, "go")
	out := filepath.Join(t.TempDir(), "testinit")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out,
		"github.com/sovereign-stack/ssbuild/images/initramfs/testdata/testinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testinit: %v\n%s", err, b)
	}
	return out
}

// InitMarker is what testinit prints first; the kernel never echoes it.
const InitMarker = "SSBUILD-INIT-REACHED"

// safeBuffer collects qemu's serial output while the test reads it.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RunQEMU runs qemu-system-x86_64 under TCG (KVM hangs at random on the
// build machines) without network, with the serial console on its
// standard output, until the guest powers off or timeout passes. The
// process is killed by its PID on timeout and when the test ends. It
// returns the serial output and whether qemu exited by itself.
func RunQEMU(t testing.TB, timeout time.Duration, args ...string) (serial string, exited bool) {
	t.Helper()
	testenv.RequireTools(t, "qemu-system-x86_64")
	base := []string{"-accel", "tcg", "-machine", "q35", "-m", "512", "-nic", "none",
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"}
	cmd := exec.Command("qemu-system-x86_64", append(base, args...)...)
	var out safeBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // by PID; a no-op once it exited
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case err := <-waited:
		t.Logf("qemu (pid %d) exited after %v: %v", pid, time.Since(start).Round(100*time.Millisecond), err)
		return out.String(), true
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		t.Logf("qemu (pid %d) killed after %v", pid, timeout)
		return out.String(), false
	}
}

// Lines returns the lines of serial output that contain s, for messages.
func Lines(serial, s string) []string {
	var out []string
	for _, l := range strings.Split(serial, "\n") {
		if strings.Contains(l, s) {
			out = append(out, strings.TrimRight(l, "\r"))
		}
	}
	return out
}
