package slimimage

import (
	"context"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
)

// ImportForTest makes ref in c for a test, from the tree cached with the
// shared bookworm rootfs (built once per machine: parallel test binaries
// wait for the first) and returns its image ID. It skips (fails under CI)
// where no rootfs can be built.
func ImportForTest(t testing.TB, c client.APIClient, img Image, ref string, changes []string) string {
	t.Helper()
	rootfstest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	id, err := Import(ctx, c, rootfstest.CacheDir(), rootfstest.Bookworm(), progress.Discard(), img, ref, changes)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
