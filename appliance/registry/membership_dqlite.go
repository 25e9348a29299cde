//go:build libsqlite3 && cgo

package registry

import (
	"context"
	"fmt"
)

// remove asks the leader to drop the node at address; found says whether
// there was one.
func (n *dqliteNode) remove(ctx context.Context, address string) (found bool, err error) {
	cli, err := n.app.Leader(ctx)
	if err != nil {
		return false, fmt.Errorf("registry %s: find leader: %w", n.app.Address(), err)
	}
	defer cli.Close()
	nodes, err := cli.Cluster(ctx)
	if err != nil {
		return false, fmt.Errorf("registry %s: list members: %w", n.app.Address(), err)
	}
	for _, nd := range nodes {
		if nd.Address != address {
			continue
		}
		if nd.ID == n.app.ID() {
			return true, fmt.Errorf("registry %s: will not remove this node itself", n.app.Address())
		}
		if err := cli.Remove(ctx, nd.ID); err != nil {
			return true, fmt.Errorf("registry %s: remove node %d (%s): %w", n.app.Address(), nd.ID, address, err)
		}
		return true, nil
	}
	return false, nil
}
