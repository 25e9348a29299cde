package kerneltest_test

import (
	"os"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/kerneltest"
)

func TestGet(t *testing.T) {
	k := kerneltest.Get(t)
	for _, p := range []string{k.Vmlinuz(), k.SystemdBoot()} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	t.Logf("kernel %s in %s", k.Version, k.Root)
}
