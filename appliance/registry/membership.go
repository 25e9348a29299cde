package registry

import (
	"context"
	"fmt"
	"time"
)

// nodeRemover is the part of the node that changes registry membership.
type nodeRemover interface {
	remove(ctx context.Context, address string) (bool, error)
}

// RemoveNode removes the node at address from the registry cluster, so a
// fresh node can join under that address (a re-installed host) and the
// roles go to the nodes that are left. Removing an address that is no
// node's is not an error. It retries while there is no leader, until ctx
// ends.
func (r *Registry) RemoveNode(ctx context.Context, address string) error {
	rm, ok := r.node.(nodeRemover)
	if !ok {
		return fmt.Errorf("registry: remove node %s: not supported by this node", address)
	}
	if address == r.address {
		return fmt.Errorf("registry: remove node %s: that is this node", address)
	}
	for {
		_, err := rm.remove(ctx, address)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("registry: remove node %s: %w (last error: %v)", address, ctx.Err(), err)
		case <-time.After(retryWait):
		}
	}
}
