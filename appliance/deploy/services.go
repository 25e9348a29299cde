package deploy

import (
	"context"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/recipes/stacks"
)

// deploymentSecrets returns the deployment's one set of secrets from the
// state store, generating only the missing ones.
func (o *Options) deploymentSecrets(ctx context.Context, d recipes.Deployment) (secrets.Set, error) {
	names, err := stack.SecretNames(d)
	if err != nil {
		return secrets.Set{}, err
	}
	return o.State.Ensure(ctx, d.Project(), names)
}

// deployServices applies the deployment's stack to the instance's Docker.
func (o *Options) deployServices(ctx context.Context, pc lxd.InstanceServer, w work, m *mutations) (ServiceChanges, error) {
	if !stacks.Has(w.dep.Stack, w.spec.Name) {
		return ServiceChanges{}, nil // an instance without services of its own
	}
	opts := stack.DefaultOptions
	opts.BTCPayPort = w.linkPort
	opts.Scratch = o.Scratch
	if w.chainstate {
		opts.ChainstateDir = ChainstatePath
	}
	s, err := stack.RenderWith(o.Recipe, w.dep, w.spec.Name, w.secrets, opts)
	if err != nil {
		return ServiceChanges{}, err
	}
	s.Fence = fence.Check(o.State)
	if o.Scratch {
		scratchStack(s)
	}
	docker, err := instancedocker.Client(ctx, pc, w.spec.Name)
	if err != nil {
		return ServiceChanges{}, err
	}
	defer docker.Close()
	res, err := stack.Apply(ctx, docker, s, o.Progress)
	m.add(res.Mutations)
	changes := ServiceChanges{Created: res.Created, Recreated: res.Recreated,
		Unchanged: append(res.Unchanged, res.Started...), Removed: res.Removed}
	return changes, err // Apply's errors name the project and instance
}
