package deploy

import (
	"context"
	"fmt"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
)

// deployServices applies the deployment's stack to the instance's Docker.
func (o *Options) deployServices(ctx context.Context, pc lxd.InstanceServer, w work, m *mutations) (ServiceChanges, error) {
	docker, err := instancedocker.Client(pc, w.spec.Name)
	if err != nil {
		return ServiceChanges{}, err
	}
	defer docker.Close()
	v, err := docker.ServerVersion(ctx)
	if err != nil {
		return ServiceChanges{}, fmt.Errorf("%s/%s: docker: %w", w.spec.Project, w.spec.Name, err)
	}
	o.Progress.Info("%s/%s: Docker %s", w.spec.Project, w.spec.Name, v.Version)
	return ServiceChanges{}, nil
}
