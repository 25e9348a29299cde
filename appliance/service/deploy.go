package service

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
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
// deploy section (only the initiator may); the returned function waits for
// it to end after ctx has.
func (s *svc) startDeploy(ctx context.Context, state deploystate.Store) (wait func()) {
	if s.cfg.Deploy == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.deployUntilDone(ctx, state)
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
// backoff until a deploy succeeds or ctx ends. A failure is recorded as
// the host's last error (status shows it) while the step stays where it is.
func (s *svc) deployUntilDone(ctx context.Context, state deploystate.Store) {
	name := s.cfg.Host.Name
	backoff := cmp.Or(s.o.DeployBackoff, DefaultDeployBackoff)
	maxBackoff := cmp.Or(s.o.DeployBackoffMax, DefaultDeployBackoffMax)
	for attempt := 1; ; attempt++ {
		if err := s.waitMembersOnline(ctx); err != nil {
			return // only ctx ends the wait
		}
		began := time.Now()
		rep, err := s.deployOnce(ctx, state)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			detail := fmt.Sprintf("%d instances, %d mutations, in %s", len(rep.Instances), rep.Mutations, time.Since(began).Round(100*time.Millisecond))
			_ = s.reached(StepDeployed, detail) // fault injection has nothing left to stop here
			return
		}
		err = fmt.Errorf("service: %s: deploy (attempt %d): %w", name, attempt, err)
		s.log.Info("%v; trying again in %s", err, backoff)
		s.record("", "", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// waitMembersOnline returns once every configured member is an online LXD
// cluster member: a deploy places instances on members, and one that has
// not joined yet would get none of them.
func (s *svc) waitMembersOnline(ctx context.Context) error {
	last := ""
	for {
		missing := s.membersNotOnline()
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

// membersNotOnline says which configured members LXD does not list as
// online; "" when all are.
func (s *svc) membersNotOnline() string {
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
		switch st := status[m.Name]; st {
		case "Online":
		case "":
			missing = append(missing, m.Name+" not a member yet")
		default:
			missing = append(missing, m.Name+" "+st)
		}
	}
	slices.Sort(missing)
	return strings.Join(missing, ", ")
}

// deployOnce loads the recipe and runs one deploy (a reconcile: with
// nothing changed it makes no mutation), its secrets and revision in the
// registry.
func (s *svc) deployOnce(ctx context.Context, state deploystate.Store) (deploy.Report, error) {
	d := s.cfg.Deploy
	r, err := recipes.Load(d.Recipe)
	if err != nil {
		return deploy.Report{}, err
	}
	s.log.Info("%s: deploying %s (%d deployments)", s.cfg.Host.Name, d.Recipe, len(r.Deployments))
	return deploy.Deploy(ctx, deploy.Options{LXD: s.o.LXD, Recipe: r, ImageDir: d.Image, State: state,
		Member: s.cfg.Host.Name, Progress: s.log})
}
