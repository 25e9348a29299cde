package chainstate

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ManifestName is the manifest's file name at the root of the volume. It is
// in sha256sum(1) format, so `sha256sum -c` checks a mounted volume too.
const ManifestName = ".ssbuild-chainstate.sha256"

// Manifest maps each regular file of the chainstate (slash-separated path
// relative to the volume root) to its sha256 in hex.
type Manifest map[string]string

// Bytes is the canonical form: one "<sha256>  <path>\n" line per file,
// sorted by path byte-wise (LC_ALL=C sort), nothing else. For a directory
// source the recipe's sha256 is the sha256 of these bytes, which is what
//
//	cd DIR && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum
//
// prints.
func (m Manifest) Bytes() []byte {
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var b bytes.Buffer
	for _, p := range paths {
		fmt.Fprintf(&b, "%s  %s\n", m[p], p)
	}
	return b.Bytes()
}

// Digest is the sha256 of the canonical form, in hex.
func (m Manifest) Digest() string {
	sum := sha256.Sum256(m.Bytes())
	return hex.EncodeToString(sum[:])
}

// ParseManifest reads the canonical form and refuses anything else (other
// order, duplicates, bad digests), so a manifest has exactly one byte form.
func ParseManifest(data []byte) (Manifest, error) {
	m := Manifest{}
	prev := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 64*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		sum, path, ok := strings.Cut(line, "  ")
		if !ok || !isHexDigest(sum) || checkPath(path) != nil {
			return nil, fmt.Errorf("manifest line %d: %q is not \"<sha256>  <path>\"", n, line)
		}
		if _, dup := m[path]; dup {
			return nil, fmt.Errorf("manifest line %d: %s listed twice", n, path)
		}
		if path <= prev {
			return nil, fmt.Errorf("manifest line %d: %s is out of order", n, path)
		}
		m[path], prev = sum, path
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if !bytes.Equal(m.Bytes(), data) {
		return nil, errors.New("manifest is not in canonical form (line endings or a missing final newline)")
	}
	return m, nil
}

// compare checks the files found (path → sha256) against the manifest and
// names every file that is missing, extra or different.
func (m Manifest) compare(found map[string]string) error {
	var errs []error
	for _, p := range sortedKeys(m) {
		got, ok := found[p]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: missing (listed in the manifest)", p))
		case got != m[p]:
			errs = append(errs, fmt.Errorf("%s: sha256 %s, manifest says %s (file corrupted or changed)", p, got, m[p]))
		}
	}
	for _, p := range sortedKeys(found) {
		if _, ok := m[p]; !ok {
			errs = append(errs, fmt.Errorf("%s: not in the manifest (extra file)", p))
		}
	}
	return errors.Join(errs...)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func isHexDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// checkPath accepts a clean relative slash path that sha256sum prints
// without escaping (no newline, no backslash) and that is not the manifest.
func checkPath(p string) error {
	switch {
	case p == "" || p == "." || strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q: not a relative path", p)
	case strings.ContainsAny(p, "\n\r\\\x00"):
		return fmt.Errorf("%q: newline, backslash or NUL in a file name", p)
	case p == ManifestName:
		return fmt.Errorf("%s: reserved for ssbuild's manifest", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("%q: not a clean relative path", p)
		}
	}
	return nil
}
