package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
)

func TestVerifyPayload(t *testing.T) {
	good := makePayload(t)
	manifest, err := os.ReadFile(filepath.Join(good, stick.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	p, err := VerifyPayload(good, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.ESPFiles(), " "); got != "EFI/BOOT/BOOTX64.EFI initrd-large.img initrd.img loader/entries/ssbuild.conf loader/loader.conf vmlinuz" {
		t.Errorf("ESP files: %s", got)
	}
	for _, tc := range []struct {
		name, manifest, want string
	}{
		{"escape", "0000000000000000000000000000000000000000000000000000000000000000  ../etc/shadow\n", "want \"<sha256>  <relative path>\""},
		{"missing OS", removeLine(string(manifest), stick.OSImage), "os.img is not listed"},
		{"missing bootloader", removeLine(string(manifest), stick.BootloaderESP), "EFI/BOOT/BOOTX64.EFI is not listed"},
		{"missing file", string(manifest) + "0000000000000000000000000000000000000000000000000000000000000000  gone\n", "gone: open"},
		{"duplicate", string(manifest) + strings.SplitAfter(string(manifest), "\n")[0], "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(good, stick.Manifest), []byte(tc.manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyPayload(good, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("VerifyPayload: %v, want %q", err, tc.want)
			}
		})
	}
}

func removeLine(manifest, name string) string {
	var keep []string
	for _, l := range strings.SplitAfter(manifest, "\n") {
		if !strings.HasSuffix(strings.TrimSpace(l), "  "+name) && !strings.HasSuffix(strings.TrimSpace(l), "/"+name) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "")
}
