package kerneltest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/qemutest"
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

// RunQEMU runs qemu-system-x86_64 under TCG (KVM hangs at random on the
// build machines) without network, with the serial console on its
// standard output, until the guest powers off or timeout passes. The
// process is killed by its PID on timeout and when the test ends. It
// returns the serial output and whether qemu exited by itself.
func RunQEMU(t testing.TB, timeout time.Duration, args ...string) (serial string, exited bool) {
	t.Helper()
	testenv.RequireTools(t, "qemu-system-x86_64")
	start := time.Now()
	// qemutest's boot adds the rest: TCG, q35, no NIC, serial on stdout.
	b := qemutest.Start(t, append([]string{"-m", "512"}, args...)...)
	serial, exited = b.Wait(timeout, nil)
	t.Logf("qemu exited by itself: %v, after %v", exited, time.Since(start).Round(100*time.Millisecond))
	return serial, exited
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
