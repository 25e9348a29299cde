package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/recipes/stacks"
)

// Migration says what Migrate did.
type Migration struct {
	Project, Instance string
	From, To          string
	Volumes           int // custom volumes moved
	// Bytes are the root disk's and the volumes' as LXD counts them (0
	// where the pool's driver does not count: dir without quotas).
	Bytes int64
	// Generations is the instance's Lightning node's generation before and
	// after (both 0 when it runs none).
	Generations [2]int64
}

// ErrMigrateRefused wraps what Migrate refuses before any change: an
// unknown instance or member, a member that is not online.
var ErrMigrateRefused = errors.New("migrate refused, nothing changed")

// Migrate moves one instance of a deployment to cluster member to: it stops
// the instance, moves it and its custom volumes there (the way `host
// remove` does, cluster.MoveInstance), points the www → btcpay link at its
// new member, and starts it there. When the instance runs the
// deployment's Lightning node, the node gets a new generation written into
// the moved copy, so no older copy of it ever starts again, and is started
// after the fence check. An instance already on to keeps its place (a run
// cut short is run again this way) and its node still gets a new
// generation.
func Migrate(ctx context.Context, o Options, deployment, instance, to string) (Migration, error) {
	if err := o.defaults(); err != nil {
		return Migration{}, err
	}
	d, err := FindDeployment(o.Recipe, deployment)
	if err != nil {
		return Migration{}, fmt.Errorf("%w: %w", ErrMigrateRefused, err)
	}
	mg := Migration{Project: d.Project(), Instance: instance, To: to}
	ctx, release, err := o.hold(ctx, []recipes.Deployment{d}, "migrate")
	if err != nil {
		return mg, fmt.Errorf("%w: %w", ErrMigrateRefused, err)
	}
	defer release()
	pc := o.LXD.UseProject(d.Project())
	in, _, err := pc.GetInstance(instance)
	if isNotFound(err) {
		names, _ := pc.GetInstanceNames(api.InstanceTypeAny)
		return mg, fmt.Errorf("%w: deployment %s has no instance %s (it has: %s)", ErrMigrateRefused, d.Name, instance, listOrNone(names))
	} else if err != nil {
		return mg, fmt.Errorf("migrate %s/%s: %w", d.Project(), instance, err)
	}
	mg.From = in.Location
	members, err := o.LXD.GetClusterMembers()
	if err != nil {
		return mg, fmt.Errorf("migrate %s/%s: list members (GET /1.0/cluster/members): %w", d.Project(), instance, err)
	}
	var names []string
	status := ""
	for _, m := range members {
		names = append(names, m.ServerName)
		if m.ServerName == to {
			status = m.Status
		}
	}
	switch {
	case status == "":
		return mg, fmt.Errorf("%w: %s is not a member of this cluster (members: %s)", ErrMigrateRefused, to, strings.Join(names, ", "))
	case status != "Online":
		return mg, fmt.Errorf("%w: member %s is %s, not online", ErrMigrateRefused, to, status)
	}
	if instance == "www" && in.Location != to {
		all, err := o.LXD.GetInstancesAllProjects(api.InstanceTypeAny)
		if err != nil {
			return mg, fmt.Errorf("migrate %s/%s: list instances: %w", d.Project(), instance, err)
		}
		for _, x := range all {
			if x.Name == "www" && x.Location == to {
				return mg, fmt.Errorf("%w: member %s already runs the www instance of %s (one www per member: each takes its ports 80 and 443)", ErrMigrateRefused, to, x.Project)
			}
		}
	}
	// The node's stack, for its Lightning service (names and mounts).
	var st *stack.Stack
	if stacks.Has(d.Stack, instance) {
		set, err := o.deploymentSecrets(ctx, d)
		if err != nil {
			return mg, err
		}
		if st, err = stack.Render(o.Recipe, d, instance, set); err != nil {
			return mg, err
		}
	}

	if in.Location != to {
		// Room first: LXD would fail the import with the instance already
		// stopped.
		mv, need := cluster.PlanMove(o.LXD, *in, in.Location)
		free := func(member, pool string) int64 { return cluster.PoolFree(o.LXD, member, pool) }
		if short := cluster.NoRoom(to, need, free); len(short) > 0 {
			return mg, fmt.Errorf("%w: %s/%s does not fit on %s: %s", ErrMigrateRefused, d.Project(), instance, to, strings.Join(short, ", "))
		}
		mg.Bytes, mg.Volumes = mv.Bytes, len(mv.Volumes)
		if err := o.move(ctx, pc, in, mv, to); err != nil {
			return mg, fmt.Errorf("migrate %s/%s from %s to %s: %w", d.Project(), instance, mg.From, to, err)
		}
	}
	if st == nil || st.LightningService() == nil {
		return mg, nil
	}
	if err := waitReady(ctx, pc, instance); err != nil {
		return mg, fmt.Errorf("migrate %s/%s: %w", d.Project(), instance, err)
	}
	docker, err := instancedocker.Client(ctx, pc, instance)
	if err != nil {
		return mg, fmt.Errorf("migrate %s/%s: %w", d.Project(), instance, err)
	}
	defer docker.Close()
	mg.Generations[0], mg.Generations[1], err = fence.Bump(ctx, docker, o.State, st, "migrate to "+to)
	if err != nil {
		return mg, fmt.Errorf("migrate %s/%s: %w", d.Project(), instance, err)
	}
	o.Progress.Info("%s/%s: Lightning generation %d -> %d", d.Project(), instance, mg.Generations[0], mg.Generations[1])
	if err := fence.Start(ctx, docker, o.State, st); err != nil {
		return mg, fmt.Errorf("migrate %s/%s: %w", d.Project(), instance, err)
	}
	return mg, nil
}

// move stops the instance, moves it with its volumes (mv, as planned)
// and starts it on to.
func (o *Options) move(ctx context.Context, pc lxd.InstanceServer, in *api.Instance, mv cluster.Move, to string) error {
	if in.StatusCode == api.Running || in.StatusCode == api.Frozen {
		task := o.Progress.Start("stop "+in.Name, 0, "")
		err := wait(pc.UpdateInstanceState(in.Name, api.InstanceStatePut{Action: "stop", Timeout: 60, Force: true}, ""))
		task.Done(err)
		if err != nil {
			return fmt.Errorf("stop: %w", err)
		}
	}
	// A host-side link device listens on its member's address: it must
	// name the new member's before the instance starts there.
	hop, err := o.relink(pc, in.Name, to)
	if err != nil {
		return err
	}
	mv.To, mv.Running = to, false // started below, after the link
	task := o.Progress.Start(fmt.Sprintf("move %s and %d volumes to %s", in.Name, len(mv.Volumes), to), 0, "")
	err = cluster.MoveInstance(ctx, o.LXD, in.Location, mv)
	task.Done(err)
	if err != nil {
		return err
	}
	if hop != "" {
		if err := setDevice(pc, "www", linkDevice, "connect", hop); err != nil && !isNotFound(err) {
			return fmt.Errorf("point www's link at %s: %w", to, err)
		}
	}
	task = o.Progress.Start("start "+in.Name+" on "+to, 0, "")
	err = wait(pc.UpdateInstanceState(in.Name, api.InstanceStatePut{Action: "start", Timeout: -1}, ""))
	task.Done(err)
	if err != nil {
		return fmt.Errorf("start on %s: %w", to, err)
	}
	return nil
}

// relink points the instance's host-side link device (btcpay's) at member
// to's address and returns the new hop ("" when it has none).
func (o *Options) relink(pc lxd.InstanceServer, instance, to string) (string, error) {
	in, _, err := pc.GetInstance(instance)
	if err != nil {
		return "", err
	}
	dev := in.Devices[linkDevice]
	if dev == nil || dev["bind"] != "host" {
		return "", nil
	}
	_, port, err := net.SplitHostPort(strings.TrimPrefix(dev["listen"], "tcp:"))
	if err != nil {
		return "", fmt.Errorf("link device of %s: listen %q: %w", instance, dev["listen"], err)
	}
	addr, err := memberAddress(o.LXD, to)
	if err != nil {
		return "", err
	}
	hop := "tcp:" + net.JoinHostPort(addr, port)
	return hop, setDevice(pc, instance, linkDevice, "listen", hop)
}

// setDevice sets one key of an instance's own device.
func setDevice(pc lxd.InstanceServer, instance, device, key, value string) error {
	in, etag, err := pc.GetInstance(instance)
	if err != nil {
		return err
	}
	dev := in.Devices[device]
	if dev == nil || dev[key] == value {
		return nil
	}
	dev[key] = value
	return wait(pc.UpdateInstance(instance, in.Writable(), etag))
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
