package lxdimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/internal/version"
)

// Manifest is manifest.json: what went in, what came out, and with what.
type Manifest struct {
	SSBuild         string            `json:"ssbuild"`
	SourceDateEpoch int64             `json:"source_date_epoch"`
	Architecture    string            `json:"architecture"`
	Properties      map[string]string `json:"properties"`
	Inputs          []Input           `json:"inputs"`
	Outputs         []Output          `json:"outputs"`
	// Images are LXD's fingerprints of the images in the folder, as
	// `lxc image list` will show them after an import.
	Images []Image `json:"images"`
	// VMDisk holds the VM disk's fixed identifiers (for root=PARTUUID=...).
	VMDisk   *DiskIDs          `json:"vm_disk,omitempty"`
	Packages []string          `json:"packages"` // name=version from the rootfs's dpkg status
	Tools    map[string]string `json:"tools"`    // tool -> its version line
}

// Output is one file in the output folder.
type Output struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Image is one importable LXD image in the folder.
type Image struct {
	Type        string   `json:"type"` // container or virtual-machine
	Files       []string `json:"files"`
	Fingerprint string   `json:"fingerprint"`
}

func (s Spec) writeManifest(ctx context.Context, dir string, tools []string) (*Manifest, error) {
	m := &Manifest{
		SSBuild:         version.Version,
		SourceDateEpoch: s.Epoch,
		Architecture:    s.Architecture,
		Properties: map[string]string{"os": s.Properties.OS, "release": s.Properties.Release,
			"description": s.Properties.Description, "name": s.Properties.Name},
		Inputs: append([]Input{}, s.Inputs...),
		Tools:  map[string]string{},
	}
	if slices.Contains(s.Formats, VM) {
		ids := s.diskIDs()
		m.VMDisk = &ids
	}
	var err error
	if m.Packages, err = dpkgPackages(s.RootFS); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	for _, t := range tools {
		if m.Tools[t], err = toolVersion(ctx, t); err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
	}
	digests := map[string]string{}
	for _, name := range []string{imagedir.MetadataFile, imagedir.SquashfsFile, imagedir.UnifiedFile, imagedir.DiskFile} {
		out, err := hashFile(filepath.Join(dir, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		m.Outputs = append(m.Outputs, out)
		digests[name] = out.SHA256
	}
	if m.Images, err = fingerprints(dir, digests); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, imagedir.ManifestFile), append(data, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	sums := []Output{}
	for _, o := range m.Outputs {
		sums = append(sums, o)
	}
	mo, err := hashFile(filepath.Join(dir, imagedir.ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	sums = append(sums, mo)
	sort.Slice(sums, func(i, j int) bool { return sums[i].File < sums[j].File })
	var b strings.Builder
	for _, o := range sums {
		fmt.Fprintf(&b, "%s  %s\n", o.SHA256, o.File)
	}
	if err := os.WriteFile(filepath.Join(dir, signature.ChecksumsFile), []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("checksums: %w", err)
	}
	return m, nil
}

// fingerprints computes the IDs LXD gives the images: sha256 of the
// metadata tarball followed by the rootfs for a split image, sha256 of the
// file for a unified one.
func fingerprints(dir string, digests map[string]string) ([]Image, error) {
	var images []Image
	for _, split := range []struct{ rootfs, typ string }{{imagedir.SquashfsFile, "container"}, {imagedir.DiskFile, "virtual-machine"}} {
		if digests[split.rootfs] == "" {
			continue
		}
		h := sha256.New()
		for _, name := range []string{imagedir.MetadataFile, split.rootfs} {
			if err := copyFileTo(h, filepath.Join(dir, name)); err != nil {
				return nil, err
			}
		}
		images = append(images, Image{Type: split.typ, Files: []string{imagedir.MetadataFile, split.rootfs},
			Fingerprint: hex.EncodeToString(h.Sum(nil))})
	}
	if d := digests[imagedir.UnifiedFile]; d != "" {
		images = append(images, Image{Type: "container", Files: []string{imagedir.UnifiedFile}, Fingerprint: d})
	}
	return images, nil
}

func hashFile(path string) (Output, error) {
	h := sha256.New()
	if err := copyFileTo(h, path); err != nil {
		return Output{}, err
	}
	info, err := os.Stat(path)
	if err != nil {
		return Output{}, err
	}
	return Output{File: filepath.Base(path), SHA256: hex.EncodeToString(h.Sum(nil)), Size: info.Size()}, nil
}

func copyFileTo(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// ToolVersions returns the version lines of the tools that write formats,
// as the manifest records them: what an artifact cache keys on besides
// the tree, since another mksquashfs may write other bytes.
func ToolVersions(ctx context.Context, formats []Format) (map[string]string, error) {
	var tools []string
	if slices.Contains(formats, Container) {
		tools = append(tools, "mksquashfs")
	}
	if slices.Contains(formats, VM) {
		tools = append(tools, "mkfs.ext4", "debugfs", "qemu-img")
	}
	v := map[string]string{}
	for _, t := range tools {
		var err error
		if v[t], err = toolVersion(ctx, t); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// DefaultArchitecture is the LXD architecture name of this machine, what
// a Spec without Architecture builds for.
func DefaultArchitecture() (string, error) { return defaultArchitecture() }

// ToolVersion is the first line tool (mksquashfs, mkfs.ext4, debugfs,
// qemu-img) prints about its version, for cache keys.
func ToolVersion(ctx context.Context, tool string) (string, error) { return toolVersion(ctx, tool) }

// toolVersion returns the first line a tool prints about its version.
func toolVersion(ctx context.Context, tool string) (string, error) {
	args := map[string][]string{
		"mksquashfs": {"-version"},
		"mkfs.ext4":  {"-V"},
		"debugfs":    {"-V"},
		"qemu-img":   {"--version"},
	}[tool]
	var stderr bytes.Buffer
	out, err := command.Run(ctx, command.Cmd{Name: tool, Args: args, Log: &stderr})
	if err != nil {
		return "", fmt.Errorf("version of %s: %w", tool, err)
	}
	if len(bytes.TrimSpace(out)) == 0 {
		out = stderr.Bytes() // mke2fs and debugfs print their version there
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line), nil
}

// dpkgPackages lists the installed packages as name=version, sorted; an
// empty list for a tree without dpkg.
func dpkgPackages(rootfs string) ([]string, error) {
	f, err := os.Open(filepath.Join(rootfs, "var/lib/dpkg/status"))
	if os.IsNotExist(err) {
		return []string{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pkgs := []string{}
	var name, ver string
	installed := false
	flush := func() {
		if name != "" && installed {
			pkgs = append(pkgs, name+"="+ver)
		}
		name, ver, installed = "", "", false
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			flush()
		case strings.HasPrefix(line, "Package: "):
			name = strings.TrimPrefix(line, "Package: ")
		case strings.HasPrefix(line, "Version: "):
			ver = strings.TrimPrefix(line, "Version: ")
		case strings.HasPrefix(line, "Status: "):
			installed = strings.HasSuffix(line, " installed")
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dpkg status: %w", err)
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

func newBufWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 1<<20) }
