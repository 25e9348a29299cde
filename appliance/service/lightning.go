package service

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// instanceRef names an instance LXD says started.
type instanceRef struct{ project, instance string }

// startLightningWatch starts the Lightning node of every deployment
// instance that starts again on this member (LXD's lifecycle events
// instance-started and instance-restarted: the instance restarted, or LXD
// started it at boot) until ctx ends. A node has no restart policy, so
// dockerd leaves it down when its instance starts; without this it would
// stay down until the next deploy or service start, and a node that is
// down cannot answer a peer's breach in time. deploy.StartLightning starts
// it only after the fence check, so an old copy stays down whatever
// started its instance. The returned function waits for the watch to end.
func (s *svc) startLightningWatch(ctx context.Context, state deploystate.Store) (wait func()) {
	if s.cfg.Deploy == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watchLightning(ctx, state)
	}()
	return func() { <-done }
}

func (s *svc) watchLightning(ctx context.Context, state deploystate.Store) {
	name := s.cfg.Host.Name
	backoff := time.Second
	// One start at a time per instance, each in its own goroutine: one
	// that waits for its instance's Docker or the registry holds up no other.
	var nodes sync.WaitGroup
	var mu sync.Mutex
	busy := map[instanceRef]bool{}
	for ctx.Err() == nil {
		l, err := s.o.LXD.GetEventsAllProjects()
		if err != nil {
			s.log.Info("%s: LXD events (to start Lightning nodes of restarted instances): %v; trying again in %s", name, err, backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		// The handler runs on the listener's reader: it must not block.
		started := make(chan instanceRef, 64)
		_, err = l.AddHandler([]string{api.EventTypeLifecycle}, func(e api.Event) {
			if ref, ok := startedHere(e, name); ok {
				select {
				case started <- ref:
				default:
					s.log.Info("%s: too many instance starts at once: %s/%s not looked at", name, ref.project, ref.instance)
				}
			}
		})
		if err != nil { // only a listener already gone fails here
			l.Disconnect()
			time.Sleep(time.Second)
			continue
		}
		lost := make(chan struct{})
		go func() {
			_ = l.Wait()
			close(lost)
		}()
	watch:
		for {
			select {
			case <-ctx.Done():
				l.Disconnect()
				<-lost
				nodes.Wait()
				return
			case <-lost:
				break watch // LXD restarted: listen again
			case ref := <-started:
				mu.Lock()
				if !busy[ref] { // a start already on its way covers this one
					busy[ref] = true
					nodes.Add(1)
					go func() {
						defer nodes.Done()
						s.startNode(ctx, state, ref)
						mu.Lock()
						delete(busy, ref)
						mu.Unlock()
					}()
				}
				mu.Unlock()
			}
		}
	}
	nodes.Wait()
}

// startedHere says which instance a lifecycle event says started on the
// member named here.
func startedHere(e api.Event, member string) (instanceRef, bool) {
	if e.Location != "" && e.Location != member {
		return instanceRef{}, false
	}
	var lc api.EventLifecycle
	if err := json.Unmarshal(e.Metadata, &lc); err != nil {
		return instanceRef{}, false
	}
	if lc.Action != api.EventLifecycleInstanceStarted && lc.Action != api.EventLifecycleInstanceRestarted {
		return instanceRef{}, false
	}
	src, err := url.Parse(lc.Source) // /1.0/instances/NAME?project=PROJECT
	if err != nil || path.Dir(src.Path) != "/1.0/instances" {
		return instanceRef{}, false
	}
	ref := instanceRef{instance: path.Base(src.Path), project: e.Project}
	if ref.project == "" {
		ref.project = src.Query().Get("project")
	}
	if ref.project == "" {
		return instanceRef{}, false // the default project: no deployment's
	}
	return ref, true
}

// Retry backoff of a Lightning node start that failed for another reason
// than its fence (the registry without quorum while members boot, say).
const (
	nodeBackoff    = 10 * time.Second
	nodeBackoffMax = 2 * time.Minute
	nodeGiveUp     = 30 * time.Minute
)

// startNode starts the instance's Lightning node, when the instance is one
// of the cluster recipe's deployments and runs one. A failure other than
// the fence's refusal is tried again for a while: nothing else would start
// the node until the next deploy or service start.
func (s *svc) startNode(ctx context.Context, state deploystate.Store, ref instanceRef) {
	name := s.cfg.Host.Name
	backoff := nodeBackoff
	for end := time.Now().Add(nodeGiveUp); ; {
		ok, err := s.startNodeOnce(ctx, state, ref)
		switch {
		case ctx.Err() != nil:
			return
		case ok:
			s.log.Info("%s: instance %s/%s started; its Lightning node started after the fence check", name, ref.project, ref.instance)
			return
		case err == nil:
			return
		case errors.Is(err, stack.ErrFenced) || time.Now().Add(backoff).After(end):
			s.log.Info("%s: instance %s/%s started; its Lightning node is not: %v", name, ref.project, ref.instance, err)
			return
		}
		s.log.Info("%s: instance %s/%s started; its Lightning node is not yet: %v; trying again in %s", name, ref.project, ref.instance, err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, nodeBackoffMax)
	}
}

func (s *svc) startNodeOnce(ctx context.Context, state deploystate.Store, ref instanceRef) (bool, error) {
	r, _, err := s.currentRecipe(ctx, state)
	if err != nil {
		return false, err
	}
	if !slices.ContainsFunc(r.Deployments, func(d recipes.Deployment) bool { return d.Project() == ref.project }) {
		return false, nil
	}
	return deploy.StartLightning(ctx, deploy.Options{LXD: s.o.LXD, Recipe: r, State: state, Member: s.cfg.Host.Name, Progress: s.log}, ref.project, ref.instance)
}
