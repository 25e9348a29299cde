package backup

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"filippo.io/age"

	"github.com/sovereign-stack/ssbuild/internal/digest"
)

// Verify checks a backup folder: SHA256SUMS lists manifest.json and every
// file the manifest names, each file has its sum, and no other file is
// there. With identities it also decrypts every file to the end (age
// authenticates each chunk, so a changed byte fails). Every problem is
// reported, each naming its file.
func Verify(dir string, ids []age.Identity) (Manifest, error) {
	var m Manifest
	sums, err := readSums(dir)
	if err != nil {
		return m, err
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for name, want := range sums {
		got, _, err := digest.File(filepath.Join(dir, filepath.FromSlash(name)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			bad("%s: missing", name)
		case err != nil:
			bad("%s: %v", name, err)
		case got != want:
			bad("%s: sha256 %s, SHA256SUMS says %s: the file changed", name, got, want)
		}
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() || rel == SumsFile {
			return nil
		}
		if _, ok := sums[rel]; !ok {
			bad("%s: not in SHA256SUMS", rel)
		}
		return nil
	})
	if err != nil {
		return m, err
	}
	if _, ok := sums[ManifestFile]; !ok {
		bad("%s: not in SHA256SUMS", ManifestFile)
	}
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		bad("%s: %v", ManifestFile, err)
	}
	for _, it := range m.Items {
		if want, ok := sums[it.File]; !ok || want != it.SHA256 {
			bad("%s: the manifest's sha256 is not SHA256SUMS's", it.File)
			continue
		}
		if len(ids) == 0 {
			continue
		}
		if err := Decrypt(dir, it.File, ids, io.Discard); err != nil {
			bad("%s: %v", it.File, err)
		}
	}
	if len(problems) > 0 {
		return m, fmt.Errorf("backup %s:\n%s", dir, strings.Join(sortedUnique(problems), "\n"))
	}
	return m, nil
}

// Decrypt writes the plain content of the backup's file to w.
func Decrypt(dir, file string, ids []age.Identity, w io.Writer) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(file)))
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := age.Decrypt(bufio.NewReader(f), ids...)
	if err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	return nil
}

// ReadIdentities reads age identities (age-keygen's file) from path.
func ReadIdentities(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		// age's message never quotes the key material.
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return ids, nil
}

func readSums(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, SumsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("backup %s: no %s: not a finished backup", dir, SumsFile)
	}
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	for i, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 64 || name == "" || strings.Contains(name, "..") || strings.HasPrefix(name, "/") {
			return nil, fmt.Errorf("backup %s: %s line %d is not \"SHA256  FILE\"", dir, SumsFile, i+1)
		}
		sums[name] = sum
	}
	return sums, nil
}

func sortedUnique(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}
