package baseimage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/images/outcache"
	"github.com/sovereign-stack/ssbuild/internal/digest"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestOutputCache is issue 17's cache check, asserted from the build's
// report: a rebuild with nothing changed reuses every artifact and writes
// the same bytes; a corrupted cache entry is found and rebuilt, not
// shipped; a changed package list rebuilds what depends on the tree and
// reuses the rest (the chainstate, the LXD metadata).
func TestOutputCache(t *testing.T) {
	rootfstest.Require(t)
	testenv.RequireTools(t, "mksquashfs", "sha256sum")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r := demoRecipe(t)
	// No Docker images (no daemon needed); no packages, so the layer is
	// the shared bookworm tree; gzip, the faster squashfs.
	r.Image.DockerImages = nil
	r.Image.Packages = nil
	r.Image.Output.Compression = "gzip"
	datadir := t.TempDir()
	os.MkdirAll(filepath.Join(datadir, "regtest", "blocks"), 0o755)
	os.WriteFile(filepath.Join(datadir, "regtest", "blocks", "blk00000.dat"), []byte(strings.Repeat("block", 1000)), 0o644)
	os.WriteFile(filepath.Join(datadir, "regtest", "chainstate.ldb"), []byte("coins"), 0o644)
	r.Image.Chainstate = &recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: datadir}

	artifacts := filepath.Join(t.TempDir(), "artifacts")
	dir := t.TempDir()
	build := func(name string) (baseimage.Result, []progress.Event) {
		t.Helper()
		var events bytes.Buffer
		res, err := baseimage.Build(ctx, r, baseimage.Options{OutDir: filepath.Join(dir, name), CacheDir: rootfstest.CacheDir(),
			ArtifactCache: artifacts, Binary: "/bin/true", Epoch: epoch, Progress: progress.New(&events, progress.JSON)})
		if err != nil {
			t.Fatalf("build %s: %v", name, err)
		}
		var evs []progress.Event
		for _, line := range strings.Split(strings.TrimSpace(events.String()), "\n") {
			var ev progress.Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("event %q: %v", line, err)
			}
			if ev.Event == "artifact" {
				evs = append(evs, ev)
			}
		}
		return res, evs
	}
	states := func(res baseimage.Result) map[string]outcache.State {
		m := map[string]outcache.State{}
		for _, a := range res.Artifacts {
			m[a.Name] = a.State
		}
		return m
	}
	outputs := []string{"chainstate-regtest.tar", "image/metadata.tar.gz", "image/rootfs.squashfs",
		"image/container.tar.gz", "image/manifest.json", "image/SHA256SUMS"}
	want := func(t *testing.T, res baseimage.Result, evs []progress.Event, expect map[string]outcache.State) {
		t.Helper()
		got := states(res)
		for name, w := range expect {
			if got[name] != w {
				t.Errorf("%s: %q, want %q (report %+v)", name, got[name], w, res.Artifacts)
			}
		}
		// The JSON events say the same as the result.
		if len(evs) != len(res.Artifacts) {
			t.Errorf("%d artifact events for %d artifacts", len(evs), len(res.Artifacts))
		}
		for _, ev := range evs {
			if got[ev.Task] != outcache.State(ev.State) {
				t.Errorf("event %s %s, report %s", ev.Task, ev.State, got[ev.Task])
			}
		}
		cmd := exec.Command("sha256sum", "--quiet", "-c", signature.ChecksumsFile)
		cmd.Dir = res.OutDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sha256sum -c: %v\n%s", err, out)
		}
	}
	all := func(s outcache.State) map[string]outcache.State {
		m := map[string]outcache.State{}
		for _, o := range outputs {
			m[o] = s
		}
		return m
	}

	start := time.Now()
	cold, evs := build("cold")
	t.Logf("cold build: %s", time.Since(start).Round(time.Millisecond))
	want(t, cold, evs, all(outcache.Built))

	t.Run("no change reuses every artifact, same bytes", func(t *testing.T) {
		start := time.Now()
		warm, evs := build("warm")
		t.Logf("rebuild: %s", time.Since(start).Round(time.Millisecond))
		expect := all(outcache.Reused)
		expect["rootfs"] = outcache.Reused
		want(t, warm, evs, expect)
		sameTree(t, cold.OutDir, warm.OutDir)
		if warm.Image == nil || len(warm.Image.Images) == 0 || warm.Chainstate == nil || warm.Chainstate.ManifestSHA256 != cold.Chainstate.ManifestSHA256 {
			t.Errorf("reused build's result lacks the manifest or chainstate: %+v %+v", warm.Image, warm.Chainstate)
		}
	})

	t.Run("corrupt cache entry is rebuilt", func(t *testing.T) {
		entry := findEntry(t, artifacts, "lxd-squashfs")
		p := filepath.Join(entry, "files", "rootfs.squashfs")
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		res, evs := build("after-corruption")
		expect := all(outcache.Reused)
		expect["image/rootfs.squashfs"] = outcache.Rebuilt
		expect["image/manifest.json"] = outcache.Built // written with the squashfs
		expect["image/SHA256SUMS"] = outcache.Built
		want(t, res, evs, expect)
		for _, a := range res.Artifacts {
			if a.Name == "image/rootfs.squashfs" && !strings.Contains(a.Why, "corrupt") {
				t.Errorf("rebuilt squashfs, why %q does not say the entry was corrupt", a.Why)
			}
		}
		sameTree(t, cold.OutDir, res.OutDir)
	})

	t.Run("changed package list rebuilds only what depends on the tree", func(t *testing.T) {
		// (The packages layer itself may come from the shared rootfs cache
		// of an earlier run; the artifacts' cache is this test's own.)
		r.Image.Packages = []string{"less"}
		res, evs := build("more-packages")
		want(t, res, evs, map[string]outcache.State{
			"image/rootfs.squashfs":  outcache.Built,
			"image/container.tar.gz": outcache.Built,
			"image/manifest.json":    outcache.Built,
			"chainstate-regtest.tar": outcache.Reused,
			"image/metadata.tar.gz":  outcache.Reused,
		})
		if !slicesContainsPrefix(res.Image.Packages, "less=") {
			t.Errorf("manifest packages lack less: %v", res.Image.Packages)
		}
	})
}

// sameTree fails unless the two folders hold the same files with the same
// bytes and modes.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	files := func(root string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			info, _ := d.Info()
			if d.IsDir() {
				m[rel] = info.Mode().String()
				return nil
			}
			sum, _, err := digest.File(p)
			if err != nil {
				t.Fatal(err)
			}
			m[rel] = info.Mode().String() + " " + sum
			return nil
		})
		return m
	}
	fa, fb := files(a), files(b)
	if len(fa) != len(fb) {
		t.Errorf("%s has %d entries, %s has %d", a, len(fa), b, len(fb))
	}
	for name, v := range fa {
		if fb[name] != v {
			t.Errorf("%s differs between %s and %s", name, a, b)
		}
	}
}

func findEntry(t *testing.T, cache, kind string) string {
	t.Helper()
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(cache, e.Name(), "entry.json"))
		if err != nil {
			continue
		}
		var ent outcache.Entry
		if json.Unmarshal(data, &ent) == nil && ent.Kind == kind {
			return filepath.Join(cache, e.Name())
		}
	}
	var seen []string
	for _, e := range ents {
		seen = append(seen, e.Name())
	}
	t.Fatalf("no %s entry in %s: %v", kind, cache, seen)
	return ""
}

func slicesContainsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
