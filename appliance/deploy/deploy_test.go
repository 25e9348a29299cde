package deploy_test

import (
	"context"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

// TestDeployDemoOnThreeHosts is issue 6's user check on a real three-host
// LXD cluster.
func TestDeployDemoOnThreeHosts(t *testing.T) {
	img := demoImage(t)
	bed := formedBed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	o := deploy.Options{LXD: bed.Hosts[0].LXD(), Recipe: demoRecipe(t), ImageDir: img,
		StateDir: t.TempDir(), Progress: progress.New(logWriter{t}, progress.Plain)}
	start := time.Now()
	rep, err := deploy.Deploy(ctx, o)
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	t.Logf("first deploy: %s, %d mutations", time.Since(start), rep.Mutations)
	members := map[string]string{}
	for _, in := range rep.Instances {
		if prev, ok := members[in.Member]; ok {
			t.Errorf("%s and %s both on member %s", prev, in.Name, in.Member)
		}
		members[in.Member] = in.Name
	}
	start = time.Now()
	rep, err = deploy.Deploy(ctx, o)
	if err != nil {
		t.Fatalf("second deploy: %v", err)
	}
	t.Logf("second deploy: %s, %d mutations", time.Since(start), rep.Mutations)
	if rep.Mutations != 0 {
		t.Errorf("a deploy with no change made %d mutations", rep.Mutations)
	}
}
