package service

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// DeployStateDir is where, under the state directory, an older ssbuild
// kept the deployments' generated secrets (one 0600 file per deployment):
// the service imports them into the registry and removes them.
const DeployStateDir = "deploy"

// Deploy retry backoff when Options leave it unset: a failed deploy is
// retried for as long as the service runs, never stopping the registry.
const (
	DefaultDeployBackoff    = 10 * time.Second
	DefaultDeployBackoffMax = 5 * time.Minute
)

// membersPoll is how often the deploy looks at LXD's members while it
// waits for every configured host to be online.
const membersPoll = 2 * time.Second

// startDeploy runs StepDeployed in the background when this host has a
// deploy section; the returned function waits for it to end after ctx has.
func (s *svc) startDeploy(ctx context.Context, reg *registry.Registry, state deploystate.Store) (wait func()) {
	if s.cfg.Deploy == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.deployUntilDone(ctx, reg, state)
	}()
	return func() {
		// An LXD operation in flight may outlive the cancel a little;
		// a stop must not hang on it.
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			s.log.Info("%s: deploy did not stop within 30 s; leaving it", s.cfg.Host.Name)
		}
	}
}

// deployUntilDone deploys once every member is online, retrying with
// backoff until a deploy succeeds or ctx ends. Any member with a deploy
// section may run it: the one that holds the registry's deploy lease does,
// and a member that finds the recipe deployed by another since it started
// takes that as its own deploy. A failure is recorded as the host's last
// error (status shows it) while the step stays where it is.
func (s *svc) deployUntilDone(ctx context.Context, reg *registry.Registry, state deploystate.Store) {
	name := s.cfg.Host.Name
	backoff := cmp.Or(s.o.DeployBackoff, DefaultDeployBackoff)
	maxBackoff := cmp.Or(s.o.DeployBackoffMax, DefaultDeployBackoffMax)
	started := s.started
	for attempt := 1; ; attempt++ {
		if err := s.waitMembersOnline(ctx, reg); err != nil {
			return // only ctx ends the wait
		}
		if err := s.waitBaseImage(ctx); err != nil {
			return
		}
		release, err := s.takeDeployLease(ctx, reg)
		if err != nil {
			return // only ctx ends the wait
		}
		began := time.Now()
		rep, by, err := s.deployOnce(ctx, state, started)
		release()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			detail := fmt.Sprintf("%d instances, %d mutations, in %s", len(rep.Instances), rep.Mutations, time.Since(began).Round(100*time.Millisecond))
			if by != "" {
				detail = by
			}
			_ = s.reached(StepDeployed, detail) // fault injection has nothing left to stop here
			return
		}
		err = fmt.Errorf("service: %s: deploy (attempt %d): %w", name, attempt, err)
		s.log.Info("%v; trying again in %s", err, backoff)
		s.rec.Failed(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// DeployLease is the registry lease whose holder runs the first-boot
// deploy; DeployLeaseTTL is how long it lasts unless renewed (every third
// of it while the deploy runs), so a holder that dies frees it soon.
const (
	DeployLease    = "deploy"
	DeployLeaseTTL = 90 * time.Second
)

// takeDeployLease waits until this host holds the deploy lease and keeps
// renewing it; the returned function gives it up.
func (s *svc) takeDeployLease(ctx context.Context, reg *registry.Registry) (release func(), err error) {
	name := s.cfg.Host.Name
	last := ""
	for {
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		lease, ok, err := reg.AcquireLease(wctx, DeployLease, name, DeployLeaseTTL)
		cancel()
		if ok {
			break
		}
		why := ""
		if err != nil {
			why = err.Error()
		} else {
			why = lease.Holder + " holds it"
		}
		if why != last {
			s.log.Info("%s: deploy waits for the registry's deploy lease: %s", name, why)
			last = why
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(membersPoll):
		}
	}
	rctx, stop := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		for {
			select {
			case <-rctx.Done():
				return
			case <-time.After(DeployLeaseTTL / 3):
			}
			wctx, cancel := context.WithTimeout(rctx, writeTimeout)
			if _, ok, err := reg.AcquireLease(wctx, DeployLease, name, DeployLeaseTTL); !ok && rctx.Err() == nil {
				s.log.Info("%s: renew the deploy lease: held %v, %v", name, ok, err)
			}
			cancel()
		}
	}()
	return func() {
		stop()
		<-renewed
		wctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		defer cancel()
		if err := reg.ReleaseLease(wctx, DeployLease, name); err != nil {
			s.log.Info("%s: release the deploy lease: %v", name, err)
		}
	}, nil
}

// waitBaseImage returns at once on a host that carries the base image (its
// deploy section names it); another waits until some member has imported
// it into LXD, rather than fail a deploy for the lack of it.
func (s *svc) waitBaseImage(ctx context.Context) error {
	if s.cfg.Deploy.Image != "" {
		return nil
	}
	logged := false
	for {
		if _, _, err := s.o.LXD.GetImageAlias(deploy.BaseImageAlias); err == nil {
			return nil
		}
		if !logged {
			s.log.Info("%s: deploy waits until a member with the base image has imported it into LXD", s.cfg.Host.Name)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(membersPoll):
		}
	}
}

// waitMembersOnline returns once every configured member is an online LXD
// cluster member: a deploy places instances on members, and one that has
// not joined yet would get none of them. Once the cluster has been
// deployed (the registry has a deployed revision), a configured member
// LXD no longer lists was removed (host remove, or host replace of a lost
// one) and is not waited for; one LXD lists as offline is, and the log
// says how to stop waiting if it is lost.
func (s *svc) waitMembersOnline(ctx context.Context, reg *registry.Registry) error {
	last := ""
	for {
		missing := s.membersNotOnline(s.deployedBefore(ctx, reg))
		if missing == "" {
			return nil
		}
		if missing != last {
			s.log.Info("%s: deploy waits for every member online: %s", s.cfg.Host.Name, missing)
			last = missing
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(membersPoll):
		}
	}
}

// deployedBefore reports whether some deployment has a deployed revision.
func (s *svc) deployedBefore(ctx context.Context, reg *registry.Registry) bool {
	if reg == nil {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	revs, err := reg.Deployments(rctx)
	if err != nil {
		return false
	}
	for _, r := range revs {
		if r.State == registry.RevisionDeployed {
			return true
		}
	}
	return false
}

// membersNotOnline says which configured members LXD does not list as
// online, and why; "" when all are (or, removed ones skipped, the rest).
func (s *svc) membersNotOnline(removedAreGone bool) string {
	members, err := s.o.LXD.GetClusterMembers()
	if err != nil {
		return fmt.Sprintf("list members (GET /1.0/cluster/members): %v", err)
	}
	status := map[string]string{}
	for _, m := range members {
		status[m.ServerName] = m.Status
	}
	var missing []string
	for _, m := range s.cfg.Cluster.Members {
		switch st := status[m.Name]; {
		case st == "Online":
		case st == "" && removedAreGone:
			// Removed from the cluster after it was deployed: not waited for.
		case st == "":
			missing = append(missing, m.Name+" not a member yet")
		default:
			missing = append(missing, fmt.Sprintf("%s %s (if it is lost, `ssbuild host replace %s --yes` on a member brings its instances up from their replicas and ends this wait)", m.Name, st, m.Name))
		}
	}
	slices.Sort(missing)
	return strings.Join(missing, ", ")
}

// deployOnce loads the recipe and runs one deploy (a reconcile: with
// nothing changed it makes no mutation), its secrets and revision in the
// registry. When every deployment's current revision is this recipe,
// deployed by another member since this service started, it deploys
// nothing and says by whom instead.
func (s *svc) deployOnce(ctx context.Context, state deploystate.Store, started time.Time) (deploy.Report, string, error) {
	d := s.cfg.Deploy
	r, why, err := s.currentRecipe(ctx, state)
	if err != nil {
		return deploy.Report{}, "", err
	}
	if why != "" {
		s.log.Info("%s: %s", s.cfg.Host.Name, why)
	}
	if by := s.deployedByAnother(ctx, state, r, started); by != "" {
		s.log.Info("%s: %s", s.cfg.Host.Name, by)
		return deploy.Report{}, by, nil
	}
	s.log.Info("%s: deploying %s (%d deployments)", s.cfg.Host.Name, d.Recipe, len(r.Deployments))
	rep, err := deploy.Deploy(ctx, deploy.Options{LXD: s.o.LXD, Recipe: r, ImageDir: d.Image, State: state,
		Member: s.cfg.Host.Name, Progress: s.log})
	return rep, "", err
}

// currentRecipe is the recipe this member reconciles to: its deploy
// section's file, unless the state records a later one (clusterRecipe),
// then that one and why. The host must have a deploy section.
func (s *svc) currentRecipe(ctx context.Context, state deploystate.Store) (*recipes.Recipe, string, error) {
	file := s.cfg.Deploy.Recipe
	r, err := recipes.Load(file)
	if err != nil {
		return nil, "", err
	}
	current, err := clusterRecipe(ctx, state, r, file)
	if err != nil || current == nil {
		return r, "", err
	}
	return current.recipe, current.why, nil
}

// recorded is the recipe of a deployment's latest revision in the state.
type recorded struct {
	recipe *recipes.Recipe
	why    string
}

// clusterRecipe is the recipe to reconcile to instead of this host's
// file, or nil when the file is it. The file is the one the host's stick
// carried: it seeds a deployment's first revision, but once the state has
// revisions, the latest one (deployed from any member, e.g. with
// `ssbuild deploy`) is what every member reconciles to. Otherwise a
// member that reboots, or one reinstalled from an old stick, would deploy
// its older file again and undo a later revision.
func clusterRecipe(ctx context.Context, state deploystate.Store, local *recipes.Recipe, file string) (*recorded, error) {
	digest, _, err := deploy.RecipeDigest(local)
	if err != nil || len(local.Deployments) == 0 {
		return nil, err
	}
	var latest registry.Revision
	for _, d := range local.Deployments {
		revs, err := state.History(ctx, d.Project())
		if err != nil {
			return nil, fmt.Errorf("deployment %s: revisions in %s: %w", d.Project(), state.Where(), err)
		}
		if len(revs) == 0 {
			return nil, nil // a deployment the cluster has not seen: the file is newer
		}
		if cur := revs[len(revs)-1]; cur.StartedAt.After(latest.StartedAt) {
			latest = cur
		}
	}
	if latest.SpecHash == digest || latest.Recipe == "" {
		return nil, nil
	}
	name := fmt.Sprintf("%s revision %d (from %s)", latest.Deployment, latest.Revision, state.Where())
	r, err := recipes.Parse(name, []byte(latest.Recipe), filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("the cluster's current recipe, %s: %w", name, err)
	}
	return &recorded{recipe: r, why: fmt.Sprintf("deploying the cluster's current recipe, %s by %s, not %s (an older or other revision; "+
		"`ssbuild deploy --recipe FILE` on any member changes it)", name, latest.Member, file)}, nil
}

// deployedByAnother says who deployed the recipe since started, or "".
func (s *svc) deployedByAnother(ctx context.Context, state deploystate.Store, r *recipes.Recipe, started time.Time) string {
	digest, _, err := deploy.RecipeDigest(r)
	if err != nil || len(r.Deployments) == 0 {
		return ""
	}
	var by []string
	for _, d := range r.Deployments {
		revs, err := state.History(ctx, d.Project())
		if err != nil || len(revs) == 0 {
			return ""
		}
		cur := revs[len(revs)-1]
		if cur.SpecHash != digest || cur.State != registry.RevisionDeployed || cur.Member == s.cfg.Host.Name || !cur.EndedAt.After(started) {
			return ""
		}
		by = append(by, fmt.Sprintf("%s revision %d by %s", d.Project(), cur.Revision, cur.Member))
	}
	return "deployed by another member since this service started: " + strings.Join(by, ", ")
}
