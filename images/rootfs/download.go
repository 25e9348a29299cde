package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// download fetches url into CacheDir/tarballs/<sha256> unless a file of that
// name is there already, and returns its path. The file appears under that
// name only once its digest matched; a failed or cut download leaves only a
// temp file, removed by the next download of the same digest.
func (b *Builder) download(ctx context.Context, url, want string) (string, error) {
	if b.CacheDir == "" {
		return "", errors.New("a tarball URL needs a cache directory to download into")
	}
	c := cache{dir: filepath.Join(b.CacheDir, "tarballs")}
	unlock, err := c.lock(ctx, want)
	if err != nil {
		return "", err
	}
	defer unlock()
	final := filepath.Join(c.dir, want)
	if _, err := os.Stat(final); err == nil {
		now := time.Now()
		os.Chtimes(final, now, now) // used now: Prune goes by it
		b.progress().Info("download %s: cached as %s", url, final)
		return final, nil
	}
	stale, _ := filepath.Glob(filepath.Join(c.dir, ".tmp-"+want+"-*"))
	for _, f := range stale {
		os.Remove(f)
	}
	tmp, err := os.CreateTemp(c.dir, ".tmp-"+want+"-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	defer tmp.Close()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download: server answered %s", resp.Status)
	}
	task := b.progress().Start("download "+url, max(resp.ContentLength, 0), "bytes")
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h, task), resp.Body)
	if err == nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			err = fmt.Errorf("%w: expected %s, got %s", ErrDigestMismatch, want, got)
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), final)
	}
	task.Done(err)
	if err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	return final, nil
}
