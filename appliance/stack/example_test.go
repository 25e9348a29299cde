package stack_test

import (
	"context"
	"log"
	"os"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Deploying one deployment's stacks: generate its secrets once (kept
// across runs), then render and apply each instance role to that
// instance's Docker. A second run with nothing changed makes no Docker
// mutation.
func Example() {
	r, err := recipes.Open("demo")
	if err != nil {
		log.Fatal(err)
	}
	d := r.Deployments[0]
	names, err := stack.SecretNames(d)
	if err != nil {
		log.Fatal(err)
	}
	sec, err := secrets.Ensure("/var/lib/ssbuild/secrets", d.Project(), names)
	if err != nil {
		log.Fatal(err)
	}
	rep := progress.ForFile(os.Stderr, false)
	for _, role := range stack.Roles(d) {
		st, err := stack.Render(r, d, role, sec)
		if err != nil {
			log.Fatal(err) // file:line of the stack file, or the image to add to image.dockerImages
		}
		// The instance's Docker (the lead's LXD side dials it).
		var c client.APIClient
		res, err := stack.Apply(context.Background(), c, st, rep)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("%s: created %v, recreated %v, unchanged %v, %d mutations", role, res.Created, res.Recreated, res.Unchanged, res.Mutations)
	}
}
