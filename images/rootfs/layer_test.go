package rootfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDeriveCachesTheLayer(t *testing.T) {
	b := &Builder{CacheDir: t.TempDir()}
	var bases, builds int
	layer := func(buildErr error) Layer {
		return Layer{
			Name: "packages", Key: "k1",
			Base: func(_ context.Context, dir string) error {
				bases++
				os.MkdirAll(dir, 0o755)
				return os.WriteFile(filepath.Join(dir, "base"), []byte("b"), 0o644)
			},
			Build: func(_ context.Context, dir string) error {
				builds++
				if buildErr != nil {
					return buildErr
				}
				return os.WriteFile(filepath.Join(dir, "pkg"), []byte("p"), 0o644)
			},
		}
	}
	ctx := context.Background()

	// A failed step caches nothing and says which layer failed.
	_, err := b.Derive(ctx, layer(errors.New("apt failed")), filepath.Join(t.TempDir(), "x"))
	if err == nil || err.Error() != "packages layer: apt failed" {
		t.Fatalf("err = %v", err)
	}
	if entries, _ := filepath.Glob(filepath.Join(b.CacheDir, "layers", "k1*")); len(entries) != 1 || filepath.Ext(entries[0]) != ".lock" {
		t.Fatalf("cache after a failure: %v", entries)
	}

	if _, ok, err := b.LayerBuilt(ctx, "k1"); ok || err != nil {
		t.Fatalf("LayerBuilt before any success: %v %v", ok, err)
	}
	var builtAt time.Time
	for i, want := range []bool{false, true} {
		dest := filepath.Join(t.TempDir(), "tree")
		res, err := b.Derive(ctx, layer(nil), dest)
		if err != nil {
			t.Fatal(err)
		}
		// LayerBuilt tells, without a copy, the entry Derive used.
		at, ok, err := b.LayerBuilt(ctx, "k1")
		if !ok || err != nil || !at.Equal(res.BuiltAt) || (i == 1 && !at.Equal(builtAt)) {
			t.Errorf("build %d: LayerBuilt %v %v %v, Derive's %v", i, at, ok, err, res.BuiltAt)
		}
		builtAt = at
		if res.CacheHit != want {
			t.Errorf("build %d: CacheHit %v, want %v", i, res.CacheHit, want)
		}
		for _, f := range []string{"base", "pkg"} {
			if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
				t.Errorf("build %d: %s missing from the tree", i, f)
			}
		}
	}
	if bases != 2 || builds != 2 {
		t.Errorf("base ran %d times, build %d times; want 2 and 2 (failure, miss, then a hit)", bases, builds)
	}
}

func TestDeriveRefusesPathLikeKeys(t *testing.T) {
	b := &Builder{CacheDir: t.TempDir()}
	if _, err := b.Derive(context.Background(), Layer{Name: "x", Key: "../evil"}, filepath.Join(t.TempDir(), "d")); err == nil {
		t.Fatal("a key with a path in it was accepted")
	}
}
