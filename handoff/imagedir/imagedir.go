// Package imagedir owns the layout of an `ssbuild image` output folder, which
// images/baseimage and images/lxdimage write, and the installer carries
// (handoff/stick's BaseImageDir) for appliance/deploy to read:
//
//	SHA256SUMS (+ SHA256SUMS.sig)   every file below (internal/signature)
//	ImageDir/                       the LXD image
//	  MetadataFile, SquashfsFile    a container image, split
//	  UnifiedFile                   the same, one tarball
//	  DiskFile                      a VM image's disk
//	  ManifestFile                  what went in
//	ChainstateFile(network)         the chainstate artifact (handoff/chainstate)
package imagedir

// ImageDir is the LXD image folder in the output.
const ImageDir = "image"

// File names in ImageDir.
const (
	MetadataFile = "metadata.tar.gz"
	SquashfsFile = "rootfs.squashfs"
	UnifiedFile  = "container.tar.gz"
	DiskFile     = "disk.qcow2"
	ManifestFile = "manifest.json"
)

// ChainstateFile is the chainstate artifact of a network in the output.
func ChainstateFile(network string) string { return "chainstate-" + network + ".tar" }
