package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/docker/docker/api/types/container"
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
	root := svc.MountTarget(l.Volume)
	suffix := ".set-aside-" + time.Now().UTC().Format("20060102T150405Z")
	var paths []string
	for _, p := range []string{l.ChannelDB, l.ChannelDB + "-wal", l.ChannelDB + "-shm", l.ChannelDB + "-journal", l.Seed} {
		paths = append(paths, path.Join(root, p))
	}
	if err := renameIn(ctx, c, name, paths, suffix); err != nil {
		return fmt.Errorf("set the Lightning node's channel database and seed aside in %s: %w", name, err)
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

// renameIn renames each existing path to path+suffix in the volumes of the
// stopped container name. The Docker API cannot move a file, so a
// short-lived container of the same image, user and volumes, without a
// network, runs mv.
func renameIn(ctx context.Context, c client.APIClient, name string, paths []string, suffix string) error {
	insp, err := c.ContainerInspect(ctx, name)
	if err != nil {
		return err
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, p := range paths {
		if strings.ContainsAny(p+suffix, "'\n") {
			return fmt.Errorf("path %q: unexpected character", p)
		}
		fmt.Fprintf(&script, "if [ -e '%s' ]; then mv '%s' '%s%s'; fi\n", p, p, p, suffix)
	}
	created, err := c.ContainerCreate(ctx,
		&container.Config{Image: insp.Config.Image, User: insp.Config.User, Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{script.String()}},
		&container.HostConfig{VolumesFrom: []string{name}, NetworkMode: "none"}, nil, nil, name+"-set-aside")
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = c.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true})
	}()
	waitC, errC := c.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return err
	}
	select {
	case err := <-errC:
		return err
	case w := <-waitC:
		if w.StatusCode != 0 {
			return fmt.Errorf("mv exited %d", w.StatusCode)
		}
	}
	return nil
}
