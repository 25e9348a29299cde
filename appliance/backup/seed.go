package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"filippo.io/age"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"

	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// setAsideOtherSeed runs before a restore puts a Lightning node's static
// files back. A channel database belongs to the seed that made it; when
// the backup's seed is not the live copy's (a restore into a freshly
// formed cluster, whose deploy started a new node with its own seed), the
// restored seed beside the live database would be a node that does not
// start (Core Lightning: "Wallet node_id does not match HSM"), and the new
// node's seed would be overwritten without a copy. So the live channel
// database (with its journal files) and seed are renamed, never deleted,
// to NAME.set-aside-TIME, and the node starts from the backup's seed with
// no channel database. The node's container must be stopped.
func setAsideOtherSeed(ctx context.Context, c client.APIClient, st *stack.Stack, dir string, ids []age.Identity, items []Item, rep *progress.Reporter) error {
	svc := st.LightningService()
	if svc == nil || svc.Lightning.Seed == "" {
		return nil
	}
	l := svc.Lightning
	var seed *Item
	for i, it := range items {
		if it.Service == svc.Name && it.Kind == "volume" && it.Volume == l.Volume && it.Path == l.Seed {
			seed = &items[i]
		}
	}
	if seed == nil {
		return nil // the seed does not come back: the live one stays with its database
	}
	name := st.ContainerName(svc.Name)
	live, err := fence.Seed(ctx, c, svc, name)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the Lightning node's seed %s in %s: %w", l.Seed, name, err)
	}
	backedUp, err := itemFile(dir, seed.File, ids)
	if err != nil {
		return fmt.Errorf("%s: %w", seed.File, err)
	}
	if bytes.Equal(live, backedUp) {
		return nil
	}
	suffix, err := fence.SetAside(ctx, c, st, true)
	if err != nil {
		return err
	}
	if rep != nil {
		rep.Info("%s/%s: the backup's Lightning seed is not the live node's: its channel database and seed were renamed to %s%s and %s%s "+
			"(a channel database belongs to one seed); the node starts from the backup's seed without a channel database",
			st.Project, st.Instance, l.ChannelDB, suffix, l.Seed, suffix)
	}
	return nil
}

// itemFile is the one file a backup item of a path holds.
func itemFile(dir, file string, ids []age.Identity) ([]byte, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Decrypt(dir, file, ids, pw)) }()
	b, err := fence.FirstFile(pr)
	pr.CloseWithError(errors.New("read enough"))
	return b, err
}
