package service

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// ReplicaLease is the registry lease whose holder refreshes the replicas
// of every deployed instance's volumes (deploy.Replicate), every
// backup.snapshots.minutes of the recipe. The holder keeps it by taking it
// again each interval; it lasts one interval and a minute more, so when
// the holder dies another member takes over.
const ReplicaLease = "replicate"

// replicatePath is the status socket's endpoint that runs one replica
// pass now, the one the periodic pass runs (ReplicateNow).
const replicatePath = "/v1/replicate"

// replicaInterval is the recipe's backup.snapshots.minutes; a host without
// a deploy section (or whose recipe does not load) uses the default.
func (s *svc) replicaInterval() time.Duration {
	if s.o.ReplicaInterval > 0 {
		return s.o.ReplicaInterval
	}
	r := &recipes.Recipe{}
	if s.cfg.Deploy != nil {
		if loaded, err := recipes.Load(s.cfg.Deploy.Recipe); err == nil {
			r = loaded
		}
	}
	if r.Backup.Snapshots.Minutes == 0 {
		return recipes.DefaultSnapshotMinutes * time.Minute
	}
	return time.Duration(r.Backup.Snapshots.Minutes) * time.Minute
}

// replicator runs one pass at a time, periodic or asked for.
type replicator struct {
	mu sync.Mutex
}

// startReplicas refreshes the replicas every interval while ctx lasts, on
// the member that holds the replica lease; the returned function waits for
// a pass in flight to end.
func (s *svc) startReplicas(ctx context.Context, reg *registry.Registry) (wait func()) {
	return s.periodically(ctx, "replicas", func() (time.Duration, func(context.Context) error) {
		every := s.replicaInterval()
		return every, func(ctx context.Context) error {
			_, err := s.replicateOnce(ctx, reg, every)
			return err
		}
	})
}

// periodically runs a periodic job of the service while ctx lasts: next
// says how long to wait and what to run then (nil: nothing this time);
// a failure is logged under what. The returned function waits for a run
// in flight to end (30 s at the most: an LXD operation may outlive ctx).
func (s *svc) periodically(ctx context.Context, what string, next func() (time.Duration, func(context.Context) error)) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			every, run := next()
			select {
			case <-ctx.Done():
				return
			case <-time.After(every):
			}
			if run == nil {
				continue
			}
			if err := run(ctx); err != nil && ctx.Err() == nil {
				s.log.Info("%s: %s: %v", s.cfg.Host.Name, what, err)
			}
		}
	}()
	return func() {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			s.log.Info("%s: %s did not stop within 30 s; leaving them", s.cfg.Host.Name, what)
		}
	}
}

// notHolder says another member holds the replica lease.
type notHolder struct{ holder string }

func (e notHolder) Error() string {
	return e.holder + " holds the replica lease and refreshes the replicas"
}

// replicateOnce runs one pass if this host holds (or takes) the lease.
func (s *svc) replicateOnce(ctx context.Context, reg *registry.Registry, every time.Duration) ([]deploy.ReplicaReport, error) {
	name := s.cfg.Host.Name
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	lease, ok, err := reg.AcquireLease(wctx, ReplicaLease, name, every+time.Minute)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("replica lease: %w", err)
	}
	if !ok {
		return nil, notHolder{lease.Holder}
	}
	s.replicas.mu.Lock()
	defer s.replicas.mu.Unlock()
	return deploy.Replicate(ctx, s.o.LXD, s.log)
}

func (s *svc) handleReplicate(reg *registry.Registry) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reps, err := s.replicateOnce(r.Context(), reg, s.replicaInterval())
		if _, other := err.(notHolder); other {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reps)
	}
}

// ReplicateNow asks the service on this host (its status socket) to run
// one replica pass now, as the periodic one does (only on the member
// holding the replica lease: another is refused, naming the holder).
func ReplicateNow(ctx context.Context, a *config.Appliance) ([]deploy.ReplicaReport, error) {
	sock := filepath.Join(a.StateDir, SocketName)
	c := socketClient(sock)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://service"+replicatePath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("replicas: service not serving on %s: %w", sock, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("replicas: %s", strings.TrimSpace(string(body)))
	}
	var reps []deploy.ReplicaReport
	if err := json.Unmarshal(body, &reps); err != nil {
		return nil, fmt.Errorf("replicas: %w", err)
	}
	return reps, nil
}
