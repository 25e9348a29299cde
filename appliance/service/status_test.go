package service_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/service"
)

// Status shows each deployment's current revision from the registry, with
// the last deploy's error, whichever member ran it.
func TestStatusShowsTheDeploysLastError(t *testing.T) {
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	r := &service.Report{Host: "host3", Registry: &service.RegistryView{Node: "10.0.0.13:9444", Leader: "10.0.0.12:9444",
		Deployments: []registry.Revision{{Deployment: "demo-regtest", Revision: 2, State: registry.RevisionFailed, Member: "host2",
			StartedAt: now.Add(-3 * time.Minute), EndedAt: now.Add(-2 * time.Minute), Mutations: 1,
			Error: "demo-regtest/www: services: proxy: unhealthy"}, {Deployment: "shop-mainnet", Revision: 1, State: registry.RevisionDeployed}},
		RestoreTests: []registry.RestoreTest{{Deployment: "demo-regtest", Backup: "backups/2026-12-03T060000Z", Taken: now.Add(-3 * time.Hour),
			Started: now.Add(-20*time.Minute - 41*time.Second), Ended: now.Add(-20 * time.Minute)}}}}
	var b strings.Builder
	if err := r.Write(&b, now); err != nil {
		t.Fatal(err)
	}
	want := "demo-regtest  revision 2  failed on host2 2m0s ago, 1 changes  last error: demo-regtest/www: services: proxy: unhealthy"
	if !strings.Contains(b.String(), "Deployments (from the registry):\n  "+want) {
		t.Errorf("status:\n%s\nwant %q", b.String(), want)
	}
	// Under each deployment, its last restore test (or that none ran).
	for _, want := range []string{want + "\n    restore test: backups/2026-12-03T060000Z (taken 3 h ago) restored OK 20 min ago in 41 s\n",
		"shop-mainnet  revision 1  deployed\n    restore test: never\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status:\n%s\nwant %q", b.String(), want)
		}
	}
}
