package deploy

import (
	"context"
	"fmt"
	"strings"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Doomed lists what `down --purge` of a deployment deletes for good, for
// the owner to confirm: the custom volumes (sites' data, Docker data,
// backups) with their members, the project and the secrets. Down without
// purge deletes none of these.
func Doomed(ctx context.Context, o Options, d recipes.Deployment) ([]string, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	var out []string
	vols, err := customVolumes(o.LXD, o.Recipe.Cluster.Storage.Pool, d.Project())
	if err != nil {
		return nil, err
	}
	for _, v := range vols {
		out = append(out, fmt.Sprintf("volume %s/%s on %s (%s)", d.Project(), v.Name, memberName(v.Location), v.Description))
	}
	if _, _, err := o.LXD.GetProject(d.Project()); err == nil {
		out = append(out, "LXD project "+d.Project())
	}
	has, err := o.State.Has(ctx, d.Project())
	if err != nil {
		return nil, fmt.Errorf("deployment %s: secrets: %w", d.Project(), err)
	}
	if has {
		out = append(out, "the secrets of "+d.Project()+" in "+o.State.Where())
	}
	return out, nil
}

// Down stops and removes a deployment's services and instances. The custom
// volumes (and with them the Docker volumes and site data) are kept, so a
// later Deploy finds its data; purge deletes them too, with the project
// and the deployment's secrets (list them first with Doomed).
func Down(ctx context.Context, o Options, d recipes.Deployment, purge bool) (Report, error) {
	if err := o.defaults(); err != nil {
		return Report{}, err
	}
	ctx, release, err := o.hold(ctx, []recipes.Deployment{d}, "down")
	if err != nil {
		return Report{}, err
	}
	defer release()
	var m mutations
	project := d.Project()
	if _, _, err := o.LXD.GetProject(project); isNotFound(err) {
		o.Progress.Info("%s: no such LXD project; nothing to take down", project)
		return Report{}, removeSecrets(ctx, o, project, purge)
	} else if err != nil {
		return Report{}, fmt.Errorf("project %s: %w", project, err)
	}
	pc := o.LXD.UseProject(project)
	instances, err := instancesOf(o.LXD, project)
	if err != nil {
		return Report{}, err
	}
	var rep Report
	for _, in := range instances {
		task := o.Progress.Start(project+"/"+in.Name+": down", 0, "")
		err := downInstance(ctx, pc, in, &m, o)
		task.Done(err)
		if err != nil {
			return rep, err
		}
		rep.Instances = append(rep.Instances, InstanceReport{Project: project, Name: in.Name, Member: in.Location})
	}
	if purge {
		if err := purgeProject(o, project, &m); err != nil {
			return rep, err
		}
		if err := removeSecrets(ctx, o, project, true); err != nil {
			return rep, err
		}
	}
	rep.Mutations = int(m.n.Load())
	return rep, nil
}

// downInstance takes the services down cleanly, then the instance.
func downInstance(ctx context.Context, pc lxd.InstanceServer, in api.Instance, m *mutations, o Options) error {
	if in.StatusCode == api.Running {
		docker, err := instancedocker.Client(ctx, pc, in.Name)
		if err != nil {
			return err
		}
		res, err := stack.Down(ctx, docker, in.Project, false, o.Progress)
		docker.Close()
		m.add(res.Mutations)
		if err != nil {
			return fmt.Errorf("%s/%s: services: %w", in.Project, in.Name, err)
		}
		op, err := pc.UpdateInstanceState(in.Name, api.InstanceStatePut{Action: "stop", Timeout: 30, Force: false}, "")
		if err := wait(op, err); err != nil {
			// A clean shutdown that hangs must not block down: force it.
			op, err = pc.UpdateInstanceState(in.Name, api.InstanceStatePut{Action: "stop", Force: true}, "")
			if err := wait(op, err); err != nil {
				return fmt.Errorf("stop instance %s/%s: %w", in.Project, in.Name, err)
			}
		}
		m.add(1)
	}
	if err := wait(pc.DeleteInstance(in.Name)); err != nil {
		return fmt.Errorf("delete instance %s/%s: %w", in.Project, in.Name, err)
	}
	m.add(1)
	return nil
}

// customVolumes lists the project's custom volumes on pool.
func customVolumes(c lxd.InstanceServer, pool, project string) ([]api.StorageVolume, error) {
	if _, _, err := c.GetProject(project); isNotFound(err) {
		return nil, nil
	}
	all, err := c.UseProject(project).GetStoragePoolVolumes(pool)
	if err != nil {
		return nil, fmt.Errorf("volumes of %s on pool %s: %w", project, pool, err)
	}
	var out []api.StorageVolume
	for _, v := range all {
		if v.Type == "custom" {
			out = append(out, v)
		}
	}
	return out, nil
}

func purgeProject(o Options, project string, m *mutations) error {
	pool := o.Recipe.Cluster.Storage.Pool
	vols, err := customVolumes(o.LXD, pool, project)
	if err != nil {
		return err
	}
	pc := o.LXD.UseProject(project)
	for _, v := range vols {
		tc := pc
		if v.Location != "" && v.Location != "none" {
			tc = pc.UseTarget(v.Location)
		}
		if err := tc.DeleteStoragePoolVolume(pool, "custom", v.Name); err != nil {
			return fmt.Errorf("delete volume %s/%s on %s: %w", project, v.Name, memberName(v.Location), err)
		}
		o.Progress.Info("%s: deleted volume %s", project, v.Name)
		m.add(1)
	}
	if err := o.LXD.DeleteProject(project); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete project %s: %w", project, err)
	}
	m.add(1)
	return nil
}

func removeSecrets(ctx context.Context, o Options, project string, purge bool) error {
	if !purge {
		return nil
	}
	if err := o.State.Remove(ctx, project); err != nil {
		return fmt.Errorf("remove the secrets of %s from %s: %w", project, o.State.Where(), err)
	}
	return nil
}

// FindDeployment returns the recipe's deployment named name (or its
// project name), or the scratch copy of one (Scratch).
func FindDeployment(r *recipes.Recipe, name string) (recipes.Deployment, error) {
	var have []string
	for _, d := range r.Deployments {
		if d.Name == name || d.Project() == name {
			return d, nil
		}
		have = append(have, d.Name)
	}
	// A restore test's scratch copy kept with --keep: down --purge finds it.
	for _, d := range r.Deployments {
		if s := Scratch(d); s.Name == name || s.Project() == name {
			return s, nil
		}
	}
	return recipes.Deployment{}, fmt.Errorf("the recipe has no deployment %q (it has: %s)", name, strings.Join(have, ", "))
}
