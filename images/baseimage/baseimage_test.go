package baseimage_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const epoch = 1_700_000_000

// demoRecipe is the shipped demo recipe, what `make demo` builds, with its
// one busybox web image: pre-loading is the same for every image, and the
// demo's postgres image (testkit/demopg) is pre-loaded by the deploy beds.
func demoRecipe(t *testing.T) *recipes.Recipe {
	t.Helper()
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	r.Image.DockerImages = r.Image.DockerImages[:1]
	return r
}

// ssbuildBinary builds the ssbuild binary the image carries.
func ssbuildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ssbuild")
	if err := testenv.BuildStaticSSBuild(bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func requireBuild(t *testing.T) {
	rootfstest.Require(t)
	testenv.RequireTools(t, "mksquashfs", "dockerd", "lxd", "sha256sum")
}

// TestDemoImageBootsAndLoadsItsDockerImages is issue 3's user check: the
// demo base image imports into a real LXD, a container from it boots
// systemd, the first-boot unit loads the pre-loaded Docker image into the
// instance's Docker without any registry, and a container from it runs.
// A second build with the same SOURCE_DATE_EPOCH is byte-identical.
func TestDemoImageBootsAndLoadsItsDockerImages(t *testing.T) {
	requireBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	docker := testdocker.Start(t)
	imageID := testdocker.ImportBusybox(t, docker.Client, "ssbuild-demo/web:1", "served-by-ssbuild")
	bin := ssbuildBinary(t)
	r := demoRecipe(t)
	// A small pruned regtest datadir stands in for the chainstate.
	datadir := t.TempDir()
	os.MkdirAll(filepath.Join(datadir, "regtest", "blocks"), 0o755)
	os.WriteFile(filepath.Join(datadir, "regtest", "blocks", "blk00000.dat"), []byte(strings.Repeat("block", 1000)), 0o644)
	os.WriteFile(filepath.Join(datadir, "regtest", "chainstate.ldb"), []byte("coins"), 0o644)
	r.Image.Chainstate = &recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: datadir}

	build := func(out string, artifacts ...string) baseimage.Result {
		opts := baseimage.Options{OutDir: out, CacheDir: rootfstest.CacheDir(),
			Docker: docker.Client, Binary: bin, Epoch: epoch}
		if len(artifacts) > 0 {
			opts.ArtifactCache = artifacts[0]
		}
		res, err := baseimage.Build(ctx, r, opts)
		if err != nil {
			t.Fatalf("build: %v", err)
		}
		return res
	}
	dir := t.TempDir()
	first := build(filepath.Join(dir, "one"))

	// The delivery checks itself.
	cmd := exec.Command("sha256sum", "--quiet", "-c", signature.ChecksumsFile)
	cmd.Dir = first.OutDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}

	t.Run("chainstate verifies", func(t *testing.T) {
		a := first.Chainstate
		if a == nil || filepath.Dir(a.Path) != first.OutDir {
			t.Fatalf("chainstate artifact %+v not in the output", a)
		}
		if _, err := chainstate.Verify(ctx, a.Path, chainstate.VerifyOptions{Network: "regtest", ManifestSHA256: a.ManifestSHA256}); err != nil {
			t.Errorf("artifact does not verify: %v", err)
		}
	})

	t.Run("reproducible", func(t *testing.T) {
		// The second build fills an empty output cache: it builds every
		// artifact, as the first (which has no output cache) did.
		artifacts := t.TempDir()
		second := build(filepath.Join(dir, "two"), artifacts)
		if !second.CacheHit {
			t.Error("the second build did not take the rootfs with its packages from the cache")
		}
		a, _ := os.ReadFile(filepath.Join(first.OutDir, signature.ChecksumsFile))
		b, _ := os.ReadFile(filepath.Join(second.OutDir, signature.ChecksumsFile))
		if string(a) != string(b) {
			t.Errorf("two builds with SOURCE_DATE_EPOCH=%d differ:\n%s\n---\n%s", epoch, a, b)
		}
		// With the Docker images too, a rebuild reuses every artifact.
		third := build(filepath.Join(dir, "three"), artifacts)
		for _, art := range third.Artifacts {
			if art.State != "reused" {
				t.Errorf("no-change rebuild: %s %s", art.Name, art.State)
			}
		}
		c, _ := os.ReadFile(filepath.Join(third.OutDir, signature.ChecksumsFile))
		if string(a) != string(c) {
			t.Errorf("rebuild from the output cache differs:\n%s\n---\n%s", a, c)
		}
	})

	bed := testbed.New(t, testbed.Options{})
	c := bed.Hosts[0].LXD()
	if err := testbed.UseDirPool(c, "images"); err != nil {
		t.Fatal(err)
	}
	var meta, squash string
	for _, img := range first.Image.Images {
		if img.Type == "container" && len(img.Files) == 2 {
			meta, squash = img.Files[0], img.Files[1]
		}
	}
	fp, err := testbed.ImportImage(c, filepath.Join(first.OutDir, imagedir.ImageDir), meta, squash)
	if err != nil {
		t.Fatal(err)
	}
	// Docker inside an instance needs nesting, as deploy will set it.
	if err := testbed.Launch(c, "www", fp, map[string]string{"security.nesting": "true"}); err != nil {
		t.Fatal(err)
	}
	bootCtx, bootCancel := context.WithTimeout(ctx, 3*time.Minute)
	defer bootCancel()
	if _, err := testbed.WaitSystemd(bootCtx, c, "www"); err != nil {
		t.Fatal(err)
	}
	result, _, _, _ := lxdexec.Run(c, "www", "systemctl", "show", "-p", "Result", "--value", "ssbuild-preload.service")
	if strings.TrimSpace(result) != "success" {
		status, _, _, _ := lxdexec.Run(c, "www", "journalctl", "-u", "ssbuild-preload.service", "--no-pager")
		t.Fatalf("ssbuild-preload.service result %q\n%s", result, status)
	}
	id, _, code, err := lxdexec.Run(c, "www", "docker", "image", "inspect", "-f", "{{.Id}}", "ssbuild-demo/web:1")
	if err != nil || code != 0 || strings.TrimSpace(id) != imageID {
		t.Fatalf("pre-loaded image in the instance: id %q (want %s), code %d, %v", id, imageID, code, err)
	}
	out, errOut, code, err := lxdexec.Run(c, "www", "docker", "run", "--rm", "--network", "none", "ssbuild-demo/web:1", "cat", "/marker")
	if err != nil || code != 0 || strings.TrimSpace(out) != "served-by-ssbuild" {
		t.Errorf("container from the pre-loaded image: %q, code %d, %v\n%s", out, code, err, errOut)
	}
}

// Bad inputs fail fast, name what is wrong, and leave no output folder.
func TestBadInputsLeaveNoOutput(t *testing.T) {
	requireBuild(t)
	ctx := context.Background()
	docker := testdocker.Start(t)
	testdocker.ImportBusybox(t, docker.Client, "ssbuild-demo/web:1", "x")

	for _, c := range []struct {
		name   string
		change func(r *recipes.Recipe)
		want   []string
	}{
		{"wrong digest", func(r *recipes.Recipe) {
			r.Image.DockerImages[0].Digest = "sha256:" + strings.Repeat("0", 64)
		}, []string{"step docker-images", "ssbuild-demo/web:1", "sha256:" + strings.Repeat("0", 64)}},
		{"corrupt chainstate", func(r *recipes.Recipe) {
			p := filepath.Join(t.TempDir(), "utxo.dat")
			os.WriteFile(p, []byte("not a snapshot"), 0o644)
			r.Image.Chainstate = &recipes.Chainstate{Network: "regtest", Kind: "assumeutxo", Source: p}
		}, []string{"step chainstate", "utxo.dat"}},
		{"snapshot for another network", func(r *recipes.Recipe) {
			// A valid v2 header for mainnet (magic f9beb4d9) in a regtest recipe.
			hdr := append([]byte("utxo\xff\x02\x00\xf9\xbe\xb4\xd9"), make([]byte, 40)...)
			p := filepath.Join(t.TempDir(), "utxo-mainnet.dat")
			os.WriteFile(p, hdr, 0o644)
			r.Image.Chainstate = &recipes.Chainstate{Network: "regtest", Kind: "assumeutxo", Source: p}
		}, []string{"step chainstate", "utxo-mainnet.dat", "mainnet", "regtest"}},
		{"unreachable mirror", func(r *recipes.Recipe) {
			r.Image.Source.Mirror = "http://127.0.0.1:9/debian"
		}, []string{"step rootfs", "http://127.0.0.1:9/debian"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := demoRecipe(t)
			c.change(r)
			out := filepath.Join(t.TempDir(), "out")
			_, err := baseimage.Build(ctx, r, baseimage.Options{OutDir: out, CacheDir: rootfstest.CacheDir(),
				Docker: docker.Client, Binary: "/bin/true", Epoch: epoch})
			if err == nil {
				t.Fatal("build succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if _, statErr := os.Stat(out); !errors.Is(statErr, os.ErrNotExist) {
				t.Errorf("output folder exists after a failed build")
			}
			entries, _ := os.ReadDir(filepath.Dir(out))
			for _, e := range entries {
				t.Errorf("left behind: %s", e.Name())
			}
		})
	}
}
