package deploy

import (
	"context"
	"fmt"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"

	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes/stacks"
)

// StartLightning starts the Lightning node of a deployment's instance after
// the fence check, when its container exists and is stopped: what an
// instance that started again (restarted, or its member rebooted) needs,
// since the node has no restart policy and dockerd never starts a copy by
// itself. It reports whether it started the node. An instance without a
// Lightning node, one whose node was never created (a deploy will), or
// whose node runs already, is left as it is; a copy the fence refuses stays
// down and the refusal is the error.
func StartLightning(ctx context.Context, o Options, project, instance string) (bool, error) {
	if err := o.defaults(); err != nil {
		return false, err
	}
	st, err := o.lightningStack(ctx, project, instance)
	if err != nil || st == nil {
		return false, err
	}
	svc := st.LightningService()
	where := fmt.Sprintf("%s/%s", project, instance)
	docker, err := o.readyDocker(ctx, project, instance)
	if err != nil {
		return false, err
	}
	defer docker.Close()
	name := st.ContainerName(svc.Name)
	ct, err := docker.ContainerInspect(ctx, name)
	switch {
	case errdefs.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%s: %w", where, err)
	case ct.State.Running || ct.State.Restarting:
		return false, nil
	}
	if err := fence.Start(ctx, docker, o.State, st); err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
	}
	return true, nil
}

// readyDocker waits for the instance's systemd and Docker (ReadyTimeout)
// and returns a client of its Docker.
func (o *Options) readyDocker(ctx context.Context, project, instance string) (*client.Client, error) {
	pc := o.LXD.UseProject(project)
	rctx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	if err := waitReady(rctx, pc, instance); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", project, instance, err)
	}
	docker, err := instancedocker.Client(ctx, pc, instance)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", project, instance, err)
	}
	return docker, nil
}

// lightningStack renders the stack of a deployment's instance when it runs
// a Lightning node, else nil.
func (o *Options) lightningStack(ctx context.Context, project, instance string) (*stack.Stack, error) {
	d, err := FindDeployment(o.Recipe, project)
	if err != nil || !stacks.Has(d.Stack, instance) || IsScratch(d) {
		return nil, err // a restore test's scratch copy never runs a node
	}
	set, err := o.deploymentSecrets(ctx, d)
	if err != nil {
		return nil, err
	}
	st, err := stack.Render(o.Recipe, d, instance, set)
	if err != nil || st.LightningService() == nil {
		return nil, err
	}
	return st, nil
}

// FenceReplicas moves on the Lightning generation of every node among the
// lost instances whose replica host replace takes as their volumes, and
// returns those nodes. A replica is a periodic copy: its channel database
// may be older than the node's last state, and a node started from it
// could broadcast a revoked channel state; and should the lost member
// still run (cut off, not dead), its node and this copy would run at once.
// So the replica's copy no longer holds the current generation and stays
// down (the deploy says so) until the owner recovers the node from its
// static backup (RecoverLightning), and the lost member's copy is refused
// whenever it comes back.
func FenceReplicas(ctx context.Context, state fence.Store, lost []Lost) ([]string, error) {
	var nodes []string
	for _, l := range lost {
		if l.Replica == "" {
			continue
		}
		// Only a node that has run has a generation: the state, not the
		// recipe (which this member may not have), says which instance runs one.
		node := fence.NodeName(l.Project, l.Instance)
		cur, err := state.LightningGeneration(ctx, node)
		if err != nil {
			return nodes, fmt.Errorf("Lightning generation of %s: %w", node, err)
		}
		if cur == 0 {
			continue
		}
		why := fmt.Sprintf("host replace: the replica (from %s, on %s) is a periodic copy", l.Refreshed.UTC().Format(time.RFC3339), l.Replica)
		if _, err := state.BumpLightning(ctx, node, cur, why); err != nil {
			return nodes, fmt.Errorf("Lightning generation of %s: %w", node, err)
		}
		nodes = append(nodes, node)
	}
	return nodes, nil
}

// Recovered says what RecoverLightning did.
type Recovered struct {
	Project, Instance string
	// SetAside is the suffix the channel database's files were renamed
	// with ("" when the copy had none).
	SetAside    string
	Generations [2]int64 // from, to
}

// RecoverLightning recovers a deployment's Lightning node from its static
// backup on its current instance: the node is stopped, its channel
// database set aside (renamed, never deleted), its generation moved on and
// written into this copy, and the node started. It starts from its seed and
// static channel backup (hsm_secret and emergency.recover for Core
// Lightning) without channel states of its own, so it can broadcast no
// revoked one; its peers close the channels and the funds come back
// on-chain. This is the way back for a node fenced by host replace, or
// any copy whose channel database may be stale.
func RecoverLightning(ctx context.Context, o Options, project, instance string) (Recovered, error) {
	rec := Recovered{Project: project, Instance: instance}
	if err := o.defaults(); err != nil {
		return rec, err
	}
	where := project + "/" + instance
	st, err := o.lightningStack(ctx, project, instance)
	if err != nil {
		return rec, fmt.Errorf("%s: %w", where, err)
	}
	if st == nil {
		return rec, fmt.Errorf("%s runs no Lightning node", where)
	}
	docker, err := o.readyDocker(ctx, project, instance)
	if err != nil {
		return rec, err
	}
	defer docker.Close()
	svc := st.LightningService()
	if err := fence.Stop(ctx, docker, st); err != nil {
		return rec, fmt.Errorf("%s: %w", where, err)
	}
	if _, db, err := fence.Held(ctx, docker, svc, st.ContainerName(svc.Name)); err != nil {
		return rec, fmt.Errorf("%s: %w", where, err)
	} else if db {
		if rec.SetAside, err = fence.SetAside(ctx, docker, st, false); err != nil {
			return rec, fmt.Errorf("%s: %w", where, err)
		}
		o.Progress.Info("%s: the Lightning node's channel database was renamed to %s%s", where, svc.Lightning.ChannelDB, rec.SetAside)
	}
	rec.Generations[0], rec.Generations[1], err = fence.Bump(ctx, docker, o.State, st, "recovery from the static backup")
	if err != nil {
		return rec, fmt.Errorf("%s: %w", where, err)
	}
	if err := fence.Start(ctx, docker, o.State, st); err != nil {
		return rec, fmt.Errorf("%s: %w", where, err)
	}
	return rec, nil
}
