package registry

import (
	"fmt"
	"testing"
)

// BenchmarkThreeNodes measures one registry write (PutHost: a transaction
// with a read and an upsert, replicated to a quorum) and one read (Host)
// on a 3-node cluster on loopback, through the leader's own node and
// through a follower (which forwards to the leader), over plain TCP and
// over PinnedTLS.
func BenchmarkThreeNodes(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchCluster(b, startCluster(b, 3, nil)) })
	cert, parsed := selfSigned(b, "cluster")
	b.Run("tls", func(b *testing.B) { benchCluster(b, startCluster(b, 3, PinnedTLS(cert, parsed))) })
}

func benchCluster(b *testing.B, nodes []*testNode) {
	leaderAddr, err := nodes[0].reg.Leader(opCtx(b))
	if err != nil {
		b.Fatal(err)
	}
	var leader, follower *Registry
	for _, n := range nodes {
		if n.cfg.Address == leaderAddr {
			leader = n.reg
		} else {
			follower = n.reg
		}
	}
	for _, via := range []struct {
		name string
		reg  *Registry
	}{{"leader", leader}, {"follower", follower}} {
		b.Run("write-via-"+via.name, func(b *testing.B) {
			ctx := opCtx(b)
			for i := 0; b.Loop(); i++ {
				h := Host{Name: fmt.Sprintf("h%d", i%100), Address: "10.0.0.1:8443", State: "member", Step: fmt.Sprint(i)}
				if err := via.reg.PutHost(ctx, h); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("read-via-"+via.name, func(b *testing.B) {
			ctx := opCtx(b)
			for i := 0; b.Loop(); i++ {
				if _, err := via.reg.Host(ctx, fmt.Sprintf("h%d", i%100)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
