// Package version holds the build's version, set by the Makefile with -ldflags.
package version

import "runtime/debug"

// Version is set at link time; "dev" for a plain `go build`.
var Version = "dev"

// String returns the version with the VCS revision when the binary carries it.
func String() string {
	v := Version
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && v == "dev" {
				v += "+" + s.Value
			}
		}
	}
	return v
}
