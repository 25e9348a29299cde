package gptimage_test

import (
	"regexp"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/gptimage"
)

func TestGUIDIsStablePerSeed(t *testing.T) {
	a, b := gptimage.GUID("image one disk"), gptimage.GUID("image two disk")
	if a != gptimage.GUID("image one disk") {
		t.Error("the same seed gave two GUIDs")
	}
	if a == b {
		t.Error("two seeds gave the same GUID")
	}
	// Version 4, RFC 4122 variant, upper case as go-diskfs writes them.
	if !regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`).MatchString(a) {
		t.Errorf("GUID %s is not a version 4 GUID", a)
	}
}
