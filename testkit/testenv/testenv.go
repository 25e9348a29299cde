// Package testenv lets tests that need real components (root, LXD, dockerd,
// qemu, debootstrap) say so. On a developer machine without them such a test
// is skipped with the reason; under CI (CI=true) it fails instead, because CI
// installs everything (scripts/install-deps.sh) and a skip there would hide a
// missing install step.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI.
func InCI() bool { return os.Getenv("CI") == "true" }

func missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true but %s (scripts/install-deps.sh should provide it)", why)
	}
	t.Skip(why)
}

// RequireRoot skips (or fails under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "test needs root")
	}
}

// RequireTools skips (or fails under CI) unless every tool is in PATH.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing(t, "test needs "+tool+" in PATH")
		}
	}
}

// Short skips slow tiers under `go test -short`, which never happens in CI.
func Short(t testing.TB) {
	t.Helper()
	if testing.Short() && !InCI() {
		t.Skip("slow test skipped with -short")
	}
}

// BuildStaticSSBuild builds the ssbuild command at path without cgo, so
// the binary runs on any image's OS whatever the build machine has. It
// lacks the dqlite registry, which instances and images never run.
func BuildStaticSSBuild(path string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "netgo,osusergo", "-o", path, "github.com/sovereign-stack/ssbuild/cmd/ssbuild")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build static ssbuild: %v\n%s", err, out)
	}
	return nil
}
