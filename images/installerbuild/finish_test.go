package installerbuild

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// The output folder carries the cluster secret (installer.img's payload,
// cluster.secret): it must reach its place private to the builder, even
// when the files were made under a permissive umask.
func TestFinishMakesTheOutputPrivate(t *testing.T) {
	for _, withSecret := range []bool{true, false} {
		dir := t.TempDir()
		out, dest := filepath.Join(dir, "work-out"), filepath.Join(dir, "out")
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		files := []string{ImageFile, "SHA256SUMS"}
		if withSecret {
			files = append(files, SecretFile)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(out, f), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(out, f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := finish(out, dest); err != nil {
			t.Fatalf("finish (secret %v): %v", withSecret, err)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%s still exists after the rename", out)
		}
		want := map[string]fs.FileMode{".": 0o700 | fs.ModeDir, ImageFile: 0o600, "SHA256SUMS": 0o644}
		if withSecret {
			want[SecretFile] = 0o600
		}
		for f, mode := range want {
			fi, err := os.Stat(filepath.Join(dest, f))
			if err != nil {
				t.Errorf("%s (secret %v): %v", f, withSecret, err)
			} else if fi.Mode() != mode {
				t.Errorf("%s (secret %v): mode %v; want %v", f, withSecret, fi.Mode(), mode)
			}
		}
	}
}
