package demomysql

import (
	"testing"

	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/testkit/slimimage"
)

// Import makes Ref in c for a test (slimimage.ImportForTest) and returns
// its image ID.
func Import(t testing.TB, c client.APIClient) string {
	t.Helper()
	return slimimage.ImportForTest(t, c, img, Ref, Changes)
}
