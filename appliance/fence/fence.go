// Package fence keeps a deployment's Lightning node from running twice, or
// from an old copy. The node has a generation in the deployment's state
// (the cluster's registry; deploystate.Store); the copy of the node that
// holds the current one, written as a fence file at the root of its
// Lightning volume (stack.FenceFile), is the only one that may start it.
// Restore and migrate bump the generation and write the new one into the
// live copy, so any copy made before (a snapshot, an exported instance, a
// member that comes back) holds an older generation and is refused.
//
// The check runs wherever ssbuild starts the node's container (stack.Apply
// through Check; Start); the stacks give the node no restart policy, so
// dockerd never starts a copy by itself.
package fence

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
)

// NodeName names a Lightning node in the Store: its deployment's project
// and the instance it runs in (a deployment may have two: btcpay's and
// clams').
func NodeName(project, instance string) string { return project + "/" + instance }

// Store holds the generations (deploystate.Store is one).
type Store interface {
	LightningGeneration(ctx context.Context, node string) (int64, error)
	BumpLightning(ctx context.Context, node string, from int64, why string) (int64, error)
	// LightningMovedBy says in words where, when and why the node was
	// moved to its current generation ("on host2 at ... UTC: migrate to
	// host3"; "" when not known): the owner of a refused copy learns why
	// it is no longer the current one.
	LightningMovedBy(ctx context.Context, node string) (string, error)
}

// Refused is a copy of a node that may not start.
type Refused struct {
	Container string
	Held      int64 // the copy's generation; 0: none
	Current   int64 // the state's
	ChannelDB bool  // the copy has a channel database
	Node      string
	MovedBy   string // what moved the current generation (Store.LightningMovedBy)
}

// Unwrap makes a refusal a stack.ErrFenced: a running copy is stopped.
func (e *Refused) Unwrap() error { return stack.ErrFenced }

func (e *Refused) Error() string {
	switch {
	case e.Current == 0:
		return fmt.Sprintf("Lightning node %s not started: this copy holds generation %d, but %s has no Lightning generation recorded "+
			"(a node from another cluster, or its state lost); restore the node to make a copy current", e.Container, e.Held, e.Node)
	case e.Held == 0:
		return fmt.Sprintf("Lightning node %s not started: this copy holds no generation but has a channel database, and the current generation "+
			"of %s is %d: it is not the node's current copy", e.Container, e.Node, e.Current)
	}
	since := "since this copy was made the node was restored, migrated or recovered, or host replace fenced it"
	if e.MovedBy != "" {
		since = fmt.Sprintf("generation %d was set %s", e.Current, e.MovedBy)
	}
	return fmt.Sprintf("Lightning node %s not started: this copy holds generation %d, the current generation of %s is %d: it is an older copy "+
		"(%s); starting it could broadcast revoked channel states", e.Container, e.Held, e.Node, e.Current, since)
}

// Check is the stacks' stack.FenceFunc: a copy of a node starts only
// when it holds the current generation. The node's first start anywhere
// (no generation yet, no fence file; also a node from before fencing)
// records generation 1 and writes it; a new, empty node (no fence file, no
// channel database) takes the current one.
func Check(st Store) stack.FenceFunc {
	return func(ctx context.Context, c client.APIClient, s *stack.Stack, svc *stack.Service, id string) error {
		node := NodeName(s.Project, s.Instance)
		cur, err := st.LightningGeneration(ctx, node)
		if err != nil {
			return fmt.Errorf("Lightning generation of %s: %w", node, err)
		}
		held, db, err := Held(ctx, c, svc, id)
		if err != nil {
			return err
		}
		switch {
		case held != 0 && held == cur:
			return nil
		case held == 0 && cur == 0:
			// The node's first start, or the first check of a node an
			// older ssbuild started (its channel database, no fence).
			if cur, err = st.BumpLightning(ctx, node, 0, "first start of "+s.ContainerName(svc.Name)); err != nil {
				return fmt.Errorf("Lightning generation of %s: %w", node, err)
			}
			return Write(ctx, c, svc, id, node, cur)
		case held == 0 && !db:
			return Write(ctx, c, svc, id, node, cur)
		}
		refused := &Refused{Container: s.ContainerName(svc.Name), Held: held, Current: cur, ChannelDB: db, Node: node}
		if cur > 0 {
			// Only to explain the refusal: it stands without the reason.
			refused.MovedBy, _ = st.LightningMovedBy(ctx, node)
		}
		return refused
	}
}

// file is the fence file's content.
type file struct {
	Node       string `json:"node"`
	Generation int64  `json:"generation"`
}

// Held reads the generation the container's copy of the node holds (0:
// no fence file) and whether it has a channel database. The container
// need not run.
func Held(ctx context.Context, c client.APIClient, svc *stack.Service, id string) (gen int64, channelDB bool, err error) {
	root := svc.MountTarget(svc.Lightning.Volume)
	b, err := readFile(ctx, c, id, path.Join(root, stack.FenceFile))
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return 0, false, fmt.Errorf("read the fence file of %s: %w", svc.Name, err)
	default:
		var f file
		if err := json.Unmarshal(b, &f); err != nil || f.Generation < 1 {
			return 0, false, fmt.Errorf("the fence file %s of %s is damaged (%q): not starting the node", stack.FenceFile, svc.Name, b)
		}
		gen = f.Generation
	}
	_, err = c.ContainerStatPath(ctx, id, path.Join(root, svc.Lightning.ChannelDB))
	switch {
	case errdefs.IsNotFound(err):
		return gen, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("look for the channel database of %s: %w", svc.Name, err)
	}
	return gen, true, nil
}

// Write makes gen the generation the container's copy holds.
func Write(ctx context.Context, c client.APIClient, svc *stack.Service, id, node string, gen int64) error {
	b, _ := json.Marshal(file{Node: node, Generation: gen})
	b = append(b, '\n')
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: stack.FenceFile, Mode: 0o600, Size: int64(len(b)), ModTime: time.Now()})
	tw.Write(b)
	if err := tw.Close(); err != nil {
		return err
	}
	if err := c.CopyToContainer(ctx, id, svc.MountTarget(svc.Lightning.Volume), &buf, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("write the fence file of %s: %w", svc.Name, err)
	}
	return nil
}

// Bump makes the stack's running copy of the node the only current one
// (after a restore or a migrate): it stops the node, moves the generation
// on and writes the new one into this copy. Start it with Start.
func Bump(ctx context.Context, c client.APIClient, st Store, s *stack.Stack, why string) (from, to int64, err error) {
	node := NodeName(s.Project, s.Instance)
	svc := s.LightningService()
	if svc == nil {
		return 0, 0, fmt.Errorf("%s/%s runs no Lightning node", s.Project, s.Instance)
	}
	name := s.ContainerName(svc.Name)
	if err := Stop(ctx, c, s); err != nil {
		return 0, 0, err
	}
	if from, err = st.LightningGeneration(ctx, node); err != nil {
		return 0, 0, fmt.Errorf("Lightning generation of %s: %w", node, err)
	}
	if to, err = st.BumpLightning(ctx, node, from, why); err != nil {
		return from, 0, fmt.Errorf("Lightning generation of %s: %w", node, err)
	}
	return from, to, Write(ctx, c, svc, name, node, to)
}

// Stop stops the stack's Lightning node, if it runs.
func Stop(ctx context.Context, c client.APIClient, s *stack.Stack) error {
	svc := s.LightningService()
	if svc == nil {
		return nil
	}
	timeout := int(stack.StopTimeout / time.Second)
	if err := c.ContainerStop(ctx, s.ContainerName(svc.Name), container.StopOptions{Timeout: &timeout}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("stop the Lightning node %s: %w", s.ContainerName(svc.Name), err)
	}
	return nil
}

// Start starts the stack's Lightning node after Check.
func Start(ctx context.Context, c client.APIClient, st Store, s *stack.Stack) error {
	svc := s.LightningService()
	if svc == nil {
		return nil
	}
	name := s.ContainerName(svc.Name)
	if err := Check(st)(ctx, c, s, svc, name); err != nil {
		return err
	}
	if err := c.ContainerStart(ctx, name, container.StartOptions{}); err != nil {
		return fmt.Errorf("start the Lightning node %s: %w", name, err)
	}
	return nil
}

// readFile reads one regular file (at most fileLimit bytes) from a
// container, running or not.
func readFile(ctx context.Context, c client.APIClient, id, p string) ([]byte, error) {
	rc, _, err := c.CopyFromContainer(ctx, id, p)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := FirstFile(rc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return b, nil
}

// fileLimit bounds the small files read here: the fence file and a
// node's seed (Core Lightning's hsm_secret is 32 bytes, 73 encrypted).
const fileLimit = 1 << 16

// FirstFile is the content of the first entry of a tar archive, which
// must be a regular file of at most fileLimit bytes: what Docker's copy
// API, or a backup item of one path, holds.
func FirstFile(r io.Reader) ([]byte, error) {
	tr := tar.NewReader(r)
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("read its archive: %w", err)
	}
	if h.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%s is not a regular file", h.Name)
	}
	b, err := io.ReadAll(io.LimitReader(tr, fileLimit+1))
	if err == nil && len(b) > fileLimit {
		err = fmt.Errorf("%s is larger than %d bytes", h.Name, fileLimit)
	}
	return b, err
}

// Seed reads the node's seed (x-lightning seed) from the copy in
// container id; a NotFound error when it has none.
func Seed(ctx context.Context, c client.APIClient, svc *stack.Service, id string) ([]byte, error) {
	return readFile(ctx, c, id, path.Join(svc.MountTarget(svc.Lightning.Volume), svc.Lightning.Seed))
}

// SetAside renames the stopped node's channel database (with its -wal,
// -shm and -journal files), and with withSeed its seed, to
// NAME.set-aside-<UTC time>, never deleting them, and returns that suffix.
// A node then starts without a channel database: from its seed and static
// channel backup, its peers closing the channels (recovery), or as a new
// node of another seed.
func SetAside(ctx context.Context, c client.APIClient, s *stack.Stack, withSeed bool) (string, error) {
	svc := s.LightningService()
	if svc == nil {
		return "", fmt.Errorf("%s/%s runs no Lightning node", s.Project, s.Instance)
	}
	l := svc.Lightning
	names := []string{l.ChannelDB, l.ChannelDB + "-wal", l.ChannelDB + "-shm", l.ChannelDB + "-journal"}
	what := "channel database"
	if withSeed && l.Seed != "" {
		names = append(names, l.Seed)
		what = "channel database and seed"
	}
	root := svc.MountTarget(l.Volume)
	var paths []string
	for _, n := range names {
		paths = append(paths, path.Join(root, n))
	}
	suffix := ".set-aside-" + time.Now().UTC().Format("20060102T150405Z")
	name := s.ContainerName(svc.Name)
	if err := renameIn(ctx, c, name, paths, suffix); err != nil {
		return "", fmt.Errorf("set the Lightning node's %s aside in %s: %w", what, name, err)
	}
	return suffix, nil
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
