// demo-deploy is the last step of `make demo` (scripts/demo.sh): three
// throw-away hosts on this machine run ssbuild's first-boot service, which
// forms the cluster and deploys the demo recipe; then it asks every site.
// Needs root and the packages of scripts/apt-packages.txt.
//
//	go run ./scripts/demo-deploy --image out/demo-image --ssbuild bin/ssbuild
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/demobed"
)

func main() {
	image := flag.String("image", "out/demo-image", "the demo base image (output of ssbuild image --recipe demo)")
	recipe := flag.String("recipe", "demo", "recipe file or shipped name")
	binary := flag.String("ssbuild", "bin/ssbuild", "the ssbuild each host runs as its service (make build's, with the registry)")
	flag.Parse()
	r, err := recipes.Open(*recipe)
	if err == nil {
		// The services run it inside the hosts, from their own mount namespaces.
		*binary, err = filepath.Abs(*binary)
	}
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = demobed.Run(ctx, demobed.Options{Recipe: r, ImageDir: *image, Binary: *binary, Out: os.Stdout,
			Progress: progress.ForFile(os.Stderr, false)})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-deploy:", err)
		os.Exit(1)
	}
}
