package service

import (
	"context"
	"fmt"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// RestoreTestLease is the registry lease whose holder runs the scheduled
// restore tests (recipe backup.restoreTest) every backup.restoreTest.hours;
// it lasts one interval and an hour more, so when the holder dies another
// member takes over.
const RestoreTestLease = "restore-test"

// restoreTestRecheck is how often a member whose recipe has the tests off
// looks again (a later revision may turn them on).
const restoreTestRecheck = 10 * time.Minute

// restoreTestRecipe is the recipe the tests follow: the deployments'
// recorded one, else this host's file; nil without a deploy section.
func (s *svc) restoreTestRecipe(ctx context.Context, state deploystate.Store) *recipes.Recipe {
	if s.cfg.Deploy == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	r, _, err := s.currentRecipe(ctx, state)
	if err != nil {
		return nil
	}
	return r
}

// startRestoreTests runs the scheduled restore tests while ctx lasts, on
// the member holding the lease; the returned function waits for a test in
// flight to end.
func (s *svc) startRestoreTests(ctx context.Context, reg *registry.Registry, state deploystate.Store) (wait func()) {
	return s.periodically(ctx, "restore tests", func() (time.Duration, func(context.Context) error) {
		r := s.restoreTestRecipe(ctx, state)
		if r == nil || !r.Backup.RestoreTest.Enabled() {
			return restoreTestRecheck, nil
		}
		every := time.Duration(r.Backup.RestoreTest.Hours) * time.Hour
		return every, func(ctx context.Context) error { return s.restoreTestOnce(ctx, reg, state, r, every) }
	})
}

// restoreTestOnce runs the tests if this host holds (or takes) the lease.
func (s *svc) restoreTestOnce(ctx context.Context, reg *registry.Registry, state deploystate.Store, r *recipes.Recipe, every time.Duration) error {
	name := s.cfg.Host.Name
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	_, ok, err := reg.AcquireLease(wctx, RestoreTestLease, name, every+time.Hour)
	cancel()
	if err != nil {
		return fmt.Errorf("restore test lease: %w", err)
	}
	if !ok {
		return nil // lease.Holder runs them
	}
	res, err := backup.Scheduled(ctx, backup.TestOptions{LXD: s.o.LXD, Recipe: r, State: state, Member: name,
		ImageDir: s.cfg.Deploy.Image, Progress: s.log})
	for _, t := range res {
		if t.Error == "" {
			s.log.Info("%s: restore test of %s: %s restored into a scratch copy and checked", name, t.Deployment, t.Backup)
		}
	}
	return err
}
