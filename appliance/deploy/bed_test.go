package deploy_test

import (
	"os"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/clustertest"
	"github.com/sovereign-stack/ssbuild/testkit/deploytest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

func TestMain(m *testing.M) {
	code := m.Run()
	deploytest.Cleanup()
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
