package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/cluster/clustertest"
	"github.com/sovereign-stack/ssbuild/appliance/testbed"
	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/images/rootfs/rootfstest"
	"github.com/sovereign-stack/ssbuild/internal/testdocker"
	"github.com/sovereign-stack/ssbuild/internal/testenv"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// demoRecipe is the shipped demo recipe, pointed at what the bed's hosts
// have (configtest.ForBed: a dir pool "local", a bridge "ssbr0").
func demoRecipe(t testing.TB) *recipes.Recipe {
	t.Helper()
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	r.Cluster.Storage.Pool, r.Cluster.Storage.Driver = "local", "dir"
	r.Cluster.Networks = []recipes.Network{{Name: "ssbr0", Type: "bridge"}}
	return r
}

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

// demoImage builds the demo base image once per test binary (the rootfs
// layer is cached across runs): Debian bookworm with Docker, the static
// ssbuild, and the demo's one Docker image pre-loaded.
func demoImage(t testing.TB) string {
	t.Helper()
	rootfsRequire(t)
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ssbuild-deploy-image-")
		if err != nil {
			imageErr = err
			return
		}
		imageDir = dir
		docker := testdocker.Start(t)
		testdocker.ImportBusybox(t, docker.Client, "ssbuild-demo/web:1", "demo")
		bin := filepath.Join(dir, "ssbuild")
		if imageErr = testenv.BuildStaticSSBuild(bin); imageErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		r := demoRecipe(t)
		// A small pruned regtest datadir stands in for the chainstate.
		datadir := filepath.Join(dir, "datadir")
		os.MkdirAll(filepath.Join(datadir, "regtest", "blocks"), 0o755)
		os.WriteFile(filepath.Join(datadir, "regtest", "blocks", "blk00000.dat"), []byte(strings.Repeat("block", 1000)), 0o644)
		r.Image.Chainstate = &recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: datadir}
		_, imageErr = baseimage.Build(ctx, r, baseimage.Options{OutDir: filepath.Join(dir, "out"),
			CacheDir: rootfstest.CacheDir(), Docker: docker.Client, Binary: bin, Epoch: 1_700_000_000})
	})
	if imageErr != nil {
		t.Fatalf("demo base image: %v", imageErr)
	}
	return filepath.Join(imageDir, "out")
}

func rootfsRequire(t testing.TB) {
	t.Helper()
	rootfstest.Require(t)
	testenv.RequireTools(t, append([]string{"mksquashfs", "dockerd"}, testbed.Tools...)...)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
	os.Exit(code)
}

// formedBed is a three-host bed formed into one LXD cluster by the hosts'
// own cluster service.
func formedBed(t testing.TB) *testbed.Bed {
	t.Helper()
	bed := testbed.New(t, testbed.Options{Hosts: 3})
	clustertest.Form(t, bed)
	return bed
}
