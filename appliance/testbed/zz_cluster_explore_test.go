package testbed_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/lxdinit"
	"github.com/sovereign-stack/ssbuild/appliance/testbed"
)

func TestExploreCluster(t *testing.T) {
	bed := testbed.New(t, testbed.Options{Hosts: 3})
	ctx := context.Background()
	for _, h := range bed.Hosts {
		steps, err := lxdinit.Apply(ctx, h.LXD(), lxdinit.Config{
			HTTPSAddress: net.JoinHostPort(h.Address.String(), "8443"),
			Pool:         lxdinit.StoragePool{Name: "local", Driver: "dir"},
			Network:      lxdinit.Network{Name: "lxdbr0", IPv4Address: "auto"},
		})
		t.Log(h.Name, steps, err)
	}
	h1 := bed.Hosts[0]
	start := time.Now()
	op, err := h1.LXD().UpdateCluster(api.ClusterPut{Cluster: api.Cluster{ServerName: h1.Name, Enabled: true}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Log("bootstrap", time.Since(start))
	server, _, _ := h1.LXD().GetServer()
	for _, h := range bed.Hosts[1:] {
		start := time.Now()
		top, err := h1.LXD().CreateClusterMember(api.ClusterMembersPost{ServerName: h.Name})
		if err != nil {
			t.Fatal(err)
		}
		opAPI := top.Get()
		tok, err := opAPI.ToClusterJoinToken()
		if err != nil {
			t.Fatal(err)
		}
		pre := "cluster:\n  enabled: true\n  server_name: " + h.Name + "\n  server_address: " + net.JoinHostPort(h.Address.String(), "8443") + "\n  cluster_token: " + tok.String() + "\n  member_config: []\n"
		cmd := h.Command(ctx, "lxd", "init", "--preseed")
		cmd.Stdin = strings.NewReader(pre)
		out, err := cmd.CombinedOutput()
		t.Logf("%s preseed: %s %v", h.Name, out, err)
		_ = server
		t.Log("join", h.Name, time.Since(start))
	}
	members, err := h1.LXD().GetClusterMembers()
	for _, m := range members {
		t.Log(m.ServerName, m.Status, m.Roles, m.URL)
	}
	start = time.Now()
	if err := bed.Close(); err != nil {
		t.Error(err)
	}
	t.Log("close", time.Since(start))
}
