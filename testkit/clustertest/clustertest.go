// Package clustertest forms a real LXD cluster on a test bed the way
// installed hosts do on their first boot (cluster.Service on every host,
// with the appliance.yaml the installer writes), for tests of what runs on
// a formed cluster.
package clustertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// Form runs every bed host's cluster service until each has returned (the
// cluster is formed, every member online) and returns the hosts' configs.
// The first host is the initiator; every host has a dir pool "local" and a
// bridge "ssbr0" (configtest.ForBed).
func Form(t testing.TB, bed *testbed.Bed) []configtest.Host {
	t.Helper()
	hosts, err := FormBed(context.Background(), bed)
	if err != nil {
		t.Fatal(err)
	}
	return hosts
}

// FormBed is Form for programs (the demo): it returns its error.
func FormBed(ctx context.Context, bed *testbed.Bed) ([]configtest.Host, error) {
	hosts, _, err := configtest.Write(bed)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	errs := make(chan error, len(hosts))
	for _, h := range hosts {
		go func() { errs <- run(ctx, h) }()
	}
	var first error
	for range hosts {
		if err := <-errs; err != nil && first == nil {
			first = fmt.Errorf("form the cluster: %w", err)
			cancel()
		}
	}
	return hosts, first
}

func run(ctx context.Context, h configtest.Host) error {
	secret, err := config.ReadSecret(h.Config.SecretFile)
	if err != nil {
		return err
	}
	svc, err := cluster.New(cluster.Options{
		Host: cluster.Host{Config: h.Config, Secret: secret, LXD: h.Bed.LXD(), LXDDir: h.Bed.LXDDir,
			Progress: progress.Discard()},
		Listen: h.Bed.Listen, Dial: h.Bed.DialContext,
		BackoffInitial: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", h.Bed.Name, err)
	}
	return svc.Run(ctx)
}
