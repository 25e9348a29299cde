package deploy

import (
	"context"
	"fmt"

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
	d, err := FindDeployment(o.Recipe, project)
	if err != nil || !stacks.Has(d.Stack, instance) {
		return false, err
	}
	set, err := o.deploymentSecrets(ctx, d)
	if err != nil {
		return false, err
	}
	st, err := stack.Render(o.Recipe, d, instance, set)
	if err != nil {
		return false, err
	}
	svc := st.LightningService()
	if svc == nil {
		return false, nil
	}
	where := fmt.Sprintf("%s/%s", project, instance)
	pc := o.LXD.UseProject(project)
	rctx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	if err := waitReady(rctx, pc, instance); err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
	}
	docker, err := instancedocker.Client(ctx, pc, instance)
	if err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
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
