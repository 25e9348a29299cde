// Package deploy puts a recipe's deployments onto an LXD cluster (or a
// standalone LXD): per deployment an LXD project <name>-<chain>, its
// instances (www, btcpay, clams) spread over the members with their custom
// volumes and cloud-init user-data, all from the one base image, and in
// each instance the Docker services of the deployment's stack, reached
// through LXD (appliance/instancedocker).
//
// Deploy is a reconcile: every step reads what exists first and changes
// only what differs, so a re-run with no change makes no LXD or Docker
// mutation (Report.Mutations counts them), a changed service is the only
// one recreated, and a run cut short anywhere converges when run again.
// Instances are deployed in parallel (Options.Parallel bounds it).
package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Options are what a deploy needs.
type Options struct {
	// LXD is any member of the cluster, or a standalone server.
	LXD    lxd.InstanceServer
	Recipe *recipes.Recipe
	// Deployments limits the run to these deployment names (default: all).
	Deployments []string
	// ImageDir is the output folder of `ssbuild image`, imported when the
	// base image is not in LXD yet.
	ImageDir string
	// State keeps each deployment's secrets and revisions: on a cluster
	// member the registry (deploystate.Client, deploystate.Registry), on a
	// standalone LXD a folder (deploystate.Folder).
	State deploystate.Store
	// StateDir, when State is nil, is the folder of a deploystate.Folder.
	StateDir string
	// Member names the host that runs the deploy, in its revision.
	Member string
	// Parallel is how many instances are deployed at once (default: all).
	Parallel int
	// ReadyTimeout bounds the wait for an instance's systemd and Docker
	// (default 5 minutes).
	ReadyTimeout time.Duration
	// Scratch deploys a restore test's scratch copy (Scratch): only
	// deployments named so, none of whose instances binds a port of its
	// member, without the www → btcpay link, with the stacks scratchStack
	// makes (no Lightning node; www isolated, without ACME), and no
	// revision is recorded (the copy is removed after the test).
	Scratch  bool
	Progress *progress.Reporter
}

// Report says what a deploy did.
type Report struct {
	// Mutations counts every changing LXD and Docker call; 0 means the
	// cluster already was as the recipe says.
	Mutations int
	Instances []InstanceReport
	// Removed are instances the recipe no longer has (disabled): taken
	// down like `down` does, their volumes kept for when they come back.
	Removed []InstanceReport
}

// InstanceReport is one instance's outcome.
type InstanceReport struct {
	Project, Name, Member string
	Created               bool
	Services              ServiceChanges
}

// ServiceChanges lists what happened to the instance's Docker services.
type ServiceChanges struct {
	Created, Recreated, Unchanged, Removed []string
}

func (o *Options) defaults() error {
	if o.LXD == nil || o.Recipe == nil {
		return errors.New("deploy: LXD and Recipe are required")
	}
	if o.State == nil && o.StateDir == "" {
		return errors.New("deploy: State or StateDir (where the deployments' secrets are kept) is required")
	}
	if o.State == nil {
		o.State = deploystate.Folder{Dir: secrets.Dir(o.StateDir)}
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 5 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = progress.Discard()
	}
	return nil
}

// hold holds each deployment's lease while doing runs
// (deploystate.HoldDeployment): a deploy, down, migrate, backup or restore
// of a deployment runs one at a time, on any member. When one is held by
// another, nothing is held and nothing changed.
func (o *Options) hold(ctx context.Context, deps []recipes.Deployment, doing string) (context.Context, func(), error) {
	var releases []func()
	release := func() {
		for _, r := range slices.Backward(releases) {
			r()
		}
	}
	for _, d := range deps {
		held, r, err := deploystate.HoldDeployment(ctx, o.State, d.Project(), o.Member, doing)
		if err != nil {
			release()
			return nil, nil, err
		}
		ctx, releases = held, append(releases, r)
	}
	return ctx, release, nil
}

// selected returns the recipe's deployments the run is about.
func (o *Options) selected() ([]recipes.Deployment, error) {
	if len(o.Deployments) == 0 {
		return o.Recipe.Deployments, nil
	}
	var out []recipes.Deployment
	for _, name := range o.Deployments {
		d, err := FindDeployment(o.Recipe, name)
		if err != nil {
			return nil, fmt.Errorf("deploy: %w", err)
		}
		if IsScratch(d) && !o.Scratch {
			// Deployed as a live one it would start its Lightning node.
			return nil, fmt.Errorf("deploy: %s is a restore test's scratch copy: only ssbuild backup test deploys it", d.Name)
		}
		out = append(out, d)
	}
	return out, nil
}

// target is where instances go, from the recipe's cluster section.
func (o *Options) target() (Target, error) {
	c := o.Recipe.Cluster
	if len(c.Networks) == 0 {
		return Target{}, errors.New("deploy: the recipe's cluster has no network for the instances (cluster.networks)")
	}
	return Target{Pool: c.Storage.Pool, Driver: c.Storage.Driver, Network: c.Networks[0].Name}, nil
}

// containersOnly refuses, before any change, deployments with a virtual
// machine instance: the member's ports and the www → btcpay link are LXD
// proxy devices, which on a VM work only in NAT mode towards a static
// instance address, and Docker's volume on a VM needs a block volume
// formatted inside. None of that can run here (no VMs on the test bed), so
// it is not done rather than done untested.
func containersOnly(r *recipes.Recipe, deps []recipes.Deployment) error {
	var bad []string
	for _, d := range deps {
		i := slices.IndexFunc(r.Deployments, func(x recipes.Deployment) bool { return x.Name == d.Name })
		for _, role := range virtualMachines(d) {
			bad = append(bad, fmt.Sprintf("deployments[%d].instances.%s.type: virtual-machine", i, role))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("deploy: %s: ssbuild deploy runs instances as containers only so far; set type: container in %s (nothing was changed)",
			strings.Join(bad, ", "), r.File)
	}
	return nil
}

// virtualMachines are the roles of d's enabled instances that are VMs.
func virtualMachines(d recipes.Deployment) []string {
	var roles []string
	for _, role := range d.Instances.Roles() {
		if role.Instance.IsEnabled() && role.Instance.Type == "virtual-machine" {
			roles = append(roles, role.Name)
		}
	}
	return roles
}

// CheckRecipe is deploy's refusal of virtual machines as a recipe check,
// so `ssbuild recipe validate` reports it at the instance's type.
func CheckRecipe(r *recipes.Recipe, rep recipes.Reporter) {
	for i, d := range r.Deployments {
		for _, role := range virtualMachines(d) {
			rep.At(fmt.Sprintf("deployments[%d].instances.%s.type", i, role),
				"virtual-machine: ssbuild deploy runs instances as containers only so far (set type: container)")
		}
	}
}

// work is one instance to deploy.
type work struct {
	dep     recipes.Deployment
	spec    InstanceSpec
	member  string
	secrets secrets.Set
	// chainstate: the instance has its copy of the pre-loaded chainstate.
	chainstate bool
	linkPort   int // the www instance's port leading to btcpay
}

// Deploy brings the cluster to what the recipe's deployments say, and
// records it as each deployment's revision: the recipe's digest and text,
// the member, start and end, mutations and outcome. A deploy whose state
// store (the registry) does not answer stops before any change.
func Deploy(ctx context.Context, o Options) (rep Report, err error) {
	if err := o.defaults(); err != nil {
		return Report{}, err
	}
	deps, err := o.selected()
	if err != nil {
		return Report{}, err
	}
	ctx, release, err := o.hold(ctx, deps, "deploy")
	if err != nil {
		return Report{}, err
	}
	defer release()
	if o.Scratch {
		return o.deploy(ctx, deps, nil)
	}
	runs, err := o.startRevisions(ctx, deps)
	if err != nil {
		return Report{}, err
	}
	defer func() { o.endRevisions(runs, rep, err) }()
	return o.deploy(ctx, deps, runs)
}

func (o *Options) deploy(ctx context.Context, deps []recipes.Deployment, runs []*run) (Report, error) {
	t, err := o.target()
	if err != nil {
		return Report{}, err
	}
	if err := containersOnly(o.Recipe, deps); err != nil {
		return Report{}, err
	}
	// Plan every deployment before changing anything: a placement that
	// cannot work stops the run with the cluster untouched.
	pl, err := newPlanner(ctx, o.LXD)
	if err != nil {
		return Report{}, err
	}
	var todo []work
	for _, d := range deps {
		specs, err := Specs(o.Recipe, d, t)
		if err != nil {
			return Report{}, err
		}
		kept, err := keptVolumes(o.LXD, o.Recipe.Cluster.Storage.Pool, specs)
		if err != nil {
			return Report{}, err
		}
		where, err := pl.place(specs, kept)
		if err != nil {
			return Report{}, fmt.Errorf("deployment %s: %w", d.Project(), err)
		}
		addr, err := memberAddress(o.LXD, where["btcpay"])
		if err != nil {
			return Report{}, fmt.Errorf("deployment %s: %w", d.Project(), err)
		}
		port := linkPort(o.Recipe, d)
		if !o.Scratch {
			// A scratch copy's btcpay side would listen on its member's
			// address: its www proxy reaches no BTCPay.
			link(specs, addr, port)
		}
		for _, s := range specs {
			todo = append(todo, work{dep: d, spec: s, member: where[s.Name], linkPort: port})
		}
		if o.Scratch {
			if err := checkScratch([]recipes.Deployment{d}, specs); err != nil {
				return Report{}, err
			}
		}
	}

	var m mutations
	task := o.Progress.Start("base image "+BaseImageAlias, 0, "")
	err = ensureBaseImage(o.LXD, o.ImageDir, &m)
	task.Done(err)
	if err != nil {
		return Report{Mutations: int(m.n.Load())}, err
	}
	var removed []InstanceReport
	// A run stopped here still says what it changed.
	partial := func() Report { return Report{Removed: removed, Mutations: int(m.n.Load())} }
	for _, d := range deps {
		gone, err := o.removeDropped(ctx, d, todo, &m)
		removed = append(removed, gone...)
		if err != nil {
			return partial(), err
		}
		sec, err := o.deploymentSecrets(ctx, d)
		if err != nil {
			return partial(), fmt.Errorf("deployment %s: %w", d.Project(), err)
		}
		for _, r := range runs {
			if r.dep.Project() == d.Project() {
				r.secrets = sec
			}
		}
		if err := ensureProject(o.LXD, d.Project(), &m); err != nil {
			return partial(), err
		}
		for i := range todo {
			if todo[i].dep.Project() == d.Project() {
				todo[i].secrets = sec
			}
		}
	}

	reports := make([]InstanceReport, len(todo))
	errs := make([]error, len(todo))
	limit := o.Parallel
	if limit <= 0 {
		limit = len(todo)
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i, w := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			reports[i], errs[i] = o.deployInstance(ctx, w, &m)
		}()
	}
	wg.Wait()
	for i, w := range todo {
		for _, r := range runs {
			if r.dep.Project() == w.dep.Project() && errs[i] != nil {
				r.errs = append(r.errs, errs[i])
			}
		}
	}
	rep := Report{Instances: reports, Removed: removed, Mutations: int(m.n.Load())}
	return rep, errors.Join(errs...)
}

// removeDropped takes down the deployment's instances that are not in the
// plan any more (the recipe disabled them); their volumes stay.
func (o *Options) removeDropped(ctx context.Context, d recipes.Deployment, todo []work, m *mutations) ([]InstanceReport, error) {
	project := d.Project()
	if _, _, err := o.LXD.GetProject(project); isNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("project %s: %w", project, err)
	}
	have, err := instancesOf(o.LXD, project)
	if err != nil {
		return nil, err
	}
	var out []InstanceReport
	for _, in := range have {
		if slices.ContainsFunc(todo, func(w work) bool { return w.spec.Project == project && w.spec.Name == in.Name }) {
			continue
		}
		task := o.Progress.Start(project+"/"+in.Name+": remove (the recipe no longer has it; its volumes are kept)", 0, "")
		err := downInstance(ctx, o.LXD.UseProject(project), in, m, *o)
		task.Done(err)
		if err != nil {
			return out, err
		}
		out = append(out, InstanceReport{Project: project, Name: in.Name, Member: in.Location})
	}
	return out, nil
}

// deployInstance makes one instance and its services as the recipe says.
func (o *Options) deployInstance(ctx context.Context, w work, m *mutations) (InstanceReport, error) {
	s := w.spec
	r := InstanceReport{Project: s.Project, Name: s.Name, Member: w.member}
	label := s.Project + "/" + s.Name
	task := o.Progress.Start(label+": instance on "+memberName(w.member), 0, "")
	// Counted apart: the other instances deploy in parallel, and their
	// changes are not this one's.
	var own mutations
	pool := o.Recipe.Cluster.Storage.Pool
	err := ensureVolumes(o.LXD, pool, s, w.member, &own)
	if err == nil && s.Name == "btcpay" {
		// bitcoind starts from the pre-loaded chainstate, not from genesis.
		w.chainstate, err = ensureChainstate(ctx, o.LXD, pool, o.ImageDir, w.dep.Chain, s, w.member, &own)
		if w.chainstate {
			s.Devices = maps.Clone(s.Devices)
			s.Devices["chainstate"] = map[string]string{"type": "disk", "pool": pool, "source": s.Name + "-chainstate", "path": ChainstatePath}
		}
	}
	if err == nil {
		err = ensureInstance(o.LXD, s, w.member, &own)
	}
	r.Created = own.n.Load() != 0
	m.add(int(own.n.Load()))
	task.Done(err)
	if err != nil {
		return r, err
	}
	pc := o.LXD.UseProject(s.Project)
	task = o.Progress.Start(label+": waiting for systemd and Docker", 0, "")
	rctx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	err = waitReady(rctx, pc, s.Name)
	cancel()
	task.Done(err)
	if err != nil {
		return r, err
	}
	changes, err := o.deployServices(ctx, pc, w, m)
	r.Services = changes
	return r, err
}
