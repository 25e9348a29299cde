package deploy_test

import (
	"context"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/deploytest"
)

// BenchmarkDeployDemo times deploying the demo recipe onto a three-host
// cluster with every instance at once against one instance (so one member)
// at a time, and a re-deploy that has nothing to change. Each cold deploy
// starts from nothing (down --purge, untimed, between them).
//
//	go test ./appliance/deploy -run '^$' -bench DeployDemo -benchtime 1x
func BenchmarkDeployDemo(b *testing.B) {
	img := deploytest.DemoImage(b)
	bed := formedBed(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	r := deploytest.BedRecipe(b)
	o := deploy.Options{LXD: bed.Hosts[0].LXD(), Recipe: r, ImageDir: img,
		StateDir: b.TempDir(), Progress: progress.Discard()}
	purge := func(b *testing.B) {
		b.StopTimer()
		if _, err := deploy.Down(ctx, o, r.Deployments[0], true); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	for _, c := range []struct {
		name     string
		parallel int
	}{{"parallel", 0}, {"one-at-a-time", 1}} {
		b.Run(c.name, func(b *testing.B) {
			o := o
			o.Parallel = c.parallel
			for b.Loop() {
				if _, err := deploy.Deploy(ctx, o); err != nil {
					b.Fatal(err)
				}
				purge(b)
			}
		})
	}
	b.Run("no-change", func(b *testing.B) {
		b.StopTimer()
		if _, err := deploy.Deploy(ctx, o); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for b.Loop() {
			rep, err := deploy.Deploy(ctx, o)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Mutations != 0 {
				b.Fatalf("%d mutations", rep.Mutations)
			}
		}
	})
}
