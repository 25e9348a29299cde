package hostdisk_test

import (
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
)

// TestFitOS: the rule the build and the installer share refuses an OS
// image larger than the OS partition, naming both sizes and the fix.
func TestFitOS(t *testing.T) {
	const gib = int64(1) << 30
	if err := hostdisk.FitOS(4*gib, 4*gib); err != nil {
		t.Errorf("an image the partition's size: %v", err)
	}
	err := hostdisk.FitOS(5*gib, 4*gib)
	if err == nil {
		t.Fatal("a 5 GiB image fits a 4 GiB partition")
	}
	for _, want := range []string{"5GiB", "4GiB", "installer.layout.os"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
