package dockerpreload

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// archive builds a docker-save-like tarball: one config and manifest.json.
func archive(t *testing.T, config string, tags ...string) []byte {
	t.Helper()
	sum := sha256.Sum256([]byte(config))
	name := hex.EncodeToString(sum[:]) + ".json"
	q := `"` + strings.Join(tags, `","`) + `"`
	manifest := `[{"Config":"` + name + `","RepoTags":[` + q + `],"Layers":[]}]`
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range []struct{ name, body string }{{name, config}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f.body))
	}
	tw.Close()
	return b.Bytes()
}

// TestArchiveHolds: the check that the saved archive is the image that was
// resolved, tagged as asked (a tag moved between inspect and save, a wrong
// tag); short refs compare as docker writes them.
func TestArchiveHolds(t *testing.T) {
	config := `{"architecture":"amd64"}`
	sum := sha256.Sum256([]byte(config))
	id := "sha256:" + hex.EncodeToString(sum[:])
	other := "sha256:" + strings.Repeat("1", 64)
	for _, tc := range []struct {
		ref, id string
		tags    []string
		wantErr string
	}{
		{"busybox", id, []string{"busybox:latest"}, ""},
		{"docker.io/library/busybox:latest", id, []string{"busybox:latest"}, ""},
		{"busybox", other, []string{"busybox:latest"}, "did the tag move?"},
		{"busybox:1", id, []string{"busybox:latest"}, "do not include busybox:1"},
	} {
		c, err := readArchive(bytes.NewReader(archive(t, config, tc.tags...)))
		if err != nil {
			t.Fatal(err)
		}
		err = c.holds(tc.ref, tc.id)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("holds(%s, %s): %v, want %q", tc.ref, tc.id[:16], err, tc.wantErr)
		}
	}
}
