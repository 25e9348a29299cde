package testbed_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestClusterBedCloses forms a two-member LXD cluster on a bed, loses its
// leader, and checks that Close still removes everything, quickly: cluster
// tests end in that state.
func TestClusterBedCloses(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, testbed.Tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bed, err := testbed.Start(ctx, testbed.Options{Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Close() })
	h1, h2 := bed.Hosts[0], bed.Hosts[1]

	start := time.Now()
	for _, h := range bed.Hosts {
		setConfig(t, h, "core.https_address", net.JoinHostPort(h.Address.String(), "8443"))
	}
	op, err := h1.LXD().UpdateCluster(api.ClusterPut{Cluster: api.Cluster{ServerName: h1.Name, Enabled: true}}, "")
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("bootstrap on host1: %v", err)
	}
	joinCluster(t, ctx, h1, h2)
	members, err := h2.LXD().GetClusterMembers()
	if err != nil {
		t.Fatal(err)
	}
	online := 0
	for _, m := range members {
		if m.Status == "Online" {
			online++
		}
	}
	if online != 2 {
		t.Fatalf("host2 sees %d members online, want 2: %+v", online, members)
	}
	t.Logf("2-member cluster formed in %s", time.Since(start).Round(time.Millisecond))

	pids := []int{h1.LXDPid(), h2.LXDPid()}
	if err := h1.KillLXD(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := bed.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	took := time.Since(start)
	t.Logf("close of a cluster without its leader took %s", took.Round(time.Millisecond))
	if took > 20*time.Second {
		t.Errorf("close took %s: it waits on the leaderless cluster", took)
	}
	assertBedGone(t, bed, pids...)
}

// joinCluster joins h to the cluster of member the way LXD 5.0.2 takes it
// over the API: the whole join token goes in cluster_password (the pinned
// client refuses ClusterToken without the explicit_trust_token extension,
// and 5.0.2 given cluster_token fails to set up trust), with the cluster
// certificate fetched from the join address. A real joiner also checks that
// certificate against the token's fingerprint.
func joinCluster(t *testing.T, ctx context.Context, member, h *testbed.Host) {
	t.Helper()
	top, err := member.LXD().CreateClusterMember(api.ClusterMembersPost{ServerName: h.Name})
	if err != nil {
		t.Fatalf("join token for %s: %v", h.Name, err)
	}
	opAPI := top.Get()
	token, err := opAPI.ToClusterJoinToken()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := h.DialContext(ctx, "tcp", token.Addresses[0])
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	cert := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	op, err := h.LXD().UpdateCluster(api.ClusterPut{
		Cluster:            api.Cluster{ServerName: h.Name, Enabled: true},
		ClusterAddress:     token.Addresses[0],
		ClusterCertificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
		ServerAddress:      net.JoinHostPort(h.Address.String(), "8443"),
		ClusterPassword:    token.String(),
	}, "")
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("%s joins: %v", h.Name, err)
	}
}
