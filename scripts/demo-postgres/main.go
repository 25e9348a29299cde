// demo-postgres makes the demo's database image, ssbuild-demo/postgres:15,
// in the Docker daemon of DOCKER_HOST (scripts/demo.sh's private one) from
// Debian bookworm's postgresql-15, cached in the rootfs cache after the
// first run. Needs root (debootstrap, chroot).
//
//	go run ./scripts/demo-postgres --cache ~/.cache/ssbuild
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/demopg"
)

func main() {
	cache := flag.String("cache", "", "the rootfs cache `DIR` (ssbuild image's --cache)")
	flag.Parse()
	if *cache == "" {
		fmt.Fprintln(os.Stderr, "demo-postgres: --cache is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The demo recipe's own debootstrap spec: the image build that follows
	// finds the tree in the same cache entry, so bookworm is fetched once.
	r, err := recipes.Open("demo")
	if err != nil {
		fail(err)
	}
	src := r.Image.Source
	spec := rootfs.Debootstrap{Suite: src.Suite, Mirror: src.Mirror, Keyring: src.Keyring, Variant: src.Variant, Components: src.Components}
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		_, err = demopg.Build(ctx, c, *cache, spec, progress.ForFile(os.Stderr, false))
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "demo-postgres:", err)
	os.Exit(1)
}
