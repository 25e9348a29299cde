package rootfs

import (
	"slices"
	"strings"
	"testing"
)

// The package set follows debootstrap's rules (on the real indexes it
// matched `debootstrap --print-debs` for bookworm and jammy): Priority
// required plus the variant's base and the includes, closed over the first
// alternative of Depends and Pre-Depends, without virtual packages; on
// bookworm usr-is-merged in and usrmerge out, after it usrmerge out.
func TestDebootstrapDebs(t *testing.T) {
	const index = `Package: base-files
Priority: required
Version: 12.4
Architecture: amd64
Filename: pool/main/b/base-files/base-files_12.4_amd64.deb
Size: 10
SHA256: aa
Depends: awk | mawk, libc6 (>= 2.36)
Pre-Depends: init-system-helpers:any

Package: libc6
Priority: optional
Version: 2.36-9
Architecture: amd64
Filename: pool/main/g/glibc/libc6_2.36-9_amd64.deb
Size: 10
SHA256: bb
Description: the C library
 a continuation line: Depends: not-a-field

Package: init-system-helpers
Priority: optional
Version: 1.65
Architecture: all
Filename: pool/main/i/init/init-system-helpers_1.65_all.deb
Size: 10
SHA256: cc
Depends: usrmerge

Package: usrmerge
Priority: optional
Version: 1:37
Architecture: all
Filename: pool/main/u/usrmerge/usrmerge_37_all.deb
Size: 10
SHA256: dd

Package: usr-is-merged
Priority: optional
Version: 37
Architecture: all
Filename: pool/main/u/usrmerge/usr-is-merged_37_all.deb
Size: 10
SHA256: ee

Package: apt
Priority: important
Version: 2.6.1
Architecture: amd64
Filename: pool/main/a/apt/apt_2.6.1_amd64.deb
Size: 10
SHA256: ff
Depends: libc6

Package: curl
Priority: optional
Version: 7.88
Architecture: amd64
Filename: pool/main/c/curl/curl_7.88_amd64.deb
Size: 10
SHA256: 11
Depends: libc6
`
	idx, err := parsePackages(strings.NewReader(index))
	if err != nil {
		t.Fatal(err)
	}
	names := func(in Inputs, codename string) []string {
		var n []string
		for _, d := range debootstrapDebs(idx, in, codename, "sid") {
			n = append(n, d.Name)
		}
		return n
	}
	for _, c := range []struct {
		in       Inputs
		codename string
		want     []string
	}{
		{Inputs{Variant: "minbase"}, "bookworm", []string{"apt", "base-files", "init-system-helpers", "libc6", "usr-is-merged"}},
		{Inputs{Variant: "minbase", Include: []string{"curl"}}, "bookworm", []string{"apt", "base-files", "curl", "init-system-helpers", "libc6", "usr-is-merged"}},
		{Inputs{Variant: "minbase"}, "bullseye", []string{"apt", "base-files", "init-system-helpers", "libc6", "usrmerge"}},
		{Inputs{Variant: "minbase"}, "trixie", []string{"apt", "base-files", "init-system-helpers", "libc6"}},
	} {
		if got := names(c.in, c.codename); !slices.Equal(got, c.want) {
			t.Errorf("%s %+v: %v, want %v", c.codename, c.in, got, c.want)
		}
	}
	if got := idx["usrmerge"].cacheName(); got != "usrmerge_1%3a37_all.deb" {
		t.Errorf("cache name %q: want debootstrap's, the epoch's colon as %%3a", got)
	}
}
