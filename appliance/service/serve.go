package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
)

// statusPath is the status socket's one endpoint.
const statusPath = "/v1/registry"

// RegistryView is what the status socket answers: the registry as this
// host's node sees it at the time of the request.
type RegistryView struct {
	Node         string                 `json:"node"`   // this host's node address
	Leader       string                 `json:"leader"` // the Raft leader's address
	Members      []registry.Member      `json:"members"`
	Hosts        []registry.Host        `json:"hosts"`
	JoinAttempts []registry.JoinAttempt `json:"joinAttempts"`
	// Deployments are the current revision of each deployment (without
	// the recipe's text): who deployed it, how it ended, its last error.
	Deployments []registry.Revision `json:"deployments"`
	// RestoreTests are the last restore test of each deployment that had
	// one (ssbuild backup test).
	RestoreTests []registry.RestoreTest `json:"restoreTests,omitempty"`
}

// viewTimeout bounds a status request: a status that waits out a whole
// election would look hung, so it says "not answering" instead.
const viewTimeout = 8 * time.Second

// serve is StepServing: the status socket answers, and the host's row is
// rewritten every Heartbeat until ctx ends.
func (s *svc) serve(ctx context.Context, reg *registry.Registry) error {
	name := s.cfg.Host.Name
	sock := filepath.Join(s.cfg.StateDir, SocketName)
	// A socket file left by a killed run refuses connections: replace it.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("service: %s: remove stale %s: %w", name, sock, err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("service: %s: status socket: %w", name, err)
	}
	// Status shows hosts, addresses and fingerprints: root only.
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("service: %s: status socket: %w", name, err)
	}
	state := &deploystate.Registry{Reg: reg, KEK: s.kek, Cluster: s.cfg.Cluster.Name, Legacy: s.key, Member: name,
		ImportDirs: []string{filepath.Join(s.cfg.StateDir, DeployStateDir)},
		Logf:       func(format string, args ...any) { s.log.Info("%s: %s", name, fmt.Sprintf(format, args...)) }}
	// Secrets files of an older ssbuild go into the registry before any
	// deploy can read them; a failure leaves them for the deploy to retry.
	ictx, cancel := context.WithTimeout(ctx, writeTimeout)
	if err := state.ImportAll(ictx); err != nil {
		s.log.Info("%s: import older secrets files: %v", name, err)
	}
	// Sets an older ssbuild sealed under the derived key move to the data
	// key; a failure leaves them for their first use.
	if _, err := state.Upgrade(ictx); err != nil {
		s.log.Info("%s: deployment secrets: %v", name, err)
	}
	cancel()
	mux := http.NewServeMux()
	state.Register(mux)
	mux.HandleFunc("GET "+statusPath, func(w http.ResponseWriter, r *http.Request) {
		vctx, cancel := context.WithTimeout(r.Context(), viewTimeout)
		defer cancel()
		v, err := view(vctx, reg)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	})
	mux.HandleFunc("POST "+forgetPath, s.handleForget)
	mux.HandleFunc("POST "+replicatePath, s.handleReplicate(reg))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-served
		_ = os.Remove(sock)
	}()
	s.rec.Settle() // formation alongside no longer moves the host's step
	if err := s.reached(StepServing, sock); err != nil {
		return err
	}
	dctx, stopDeploy := context.WithCancel(ctx)
	waitDeploy := s.startDeploy(dctx, reg, state)
	waitReplicas := s.startReplicas(dctx, reg)
	waitLightning := s.startLightningWatch(dctx, state)
	waitRestoreTests := s.startRestoreTests(dctx, reg, state)
	defer func() {
		stopDeploy()
		waitDeploy()
		waitReplicas()
		waitLightning()
		waitRestoreTests()
	}()
	return s.heartbeat(ctx, reg)
}

// heartbeat rewrites the host's row until ctx ends. A failed write (no
// leader during a failover, or no quorum) is reported and retried on the
// next beat: the service keeps serving status meanwhile.
func (s *svc) heartbeat(ctx context.Context, reg *registry.Registry) error {
	name := s.cfg.Host.Name
	t := time.NewTicker(s.o.Heartbeat)
	defer t.Stop()
	failing := false
	for {
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		step, lastErr := s.rec.Current()
		err := reg.SetHostState(wctx, name, StateOnline, string(step), lastErr)
		cancel()
		switch {
		case ctx.Err() != nil:
		case err != nil && !failing:
			s.log.Info("%s: registry: heartbeat: %v", name, err)
			failing = true
		case err == nil && failing:
			s.log.Info("%s: registry: heartbeat written again", name)
			failing = false
		}
		select {
		case <-ctx.Done():
			s.log.Info("%s: stopping", name)
			return nil
		case err := <-s.formed:
			s.formed = nil
			if err != nil && ctx.Err() == nil {
				s.log.Info("%s: cluster formation (alongside the registry): %v", name, err)
				s.rec.Failed(err)
			}
		case <-t.C:
		}
	}
}

func view(ctx context.Context, reg *registry.Registry) (*RegistryView, error) {
	v := &RegistryView{Node: reg.Address()}
	var err error
	if v.Leader, err = reg.Leader(ctx); err != nil {
		return nil, err
	}
	if v.Members, err = reg.Members(ctx); err != nil {
		return nil, err
	}
	if v.Hosts, err = reg.Hosts(ctx); err != nil {
		return nil, err
	}
	if v.JoinAttempts, err = reg.JoinAttempts(ctx, ""); err != nil {
		return nil, err
	}
	if v.Deployments, err = reg.Deployments(ctx); err != nil {
		return nil, err
	}
	for i := range v.Deployments {
		v.Deployments[i].Recipe = ""
		rt, err := reg.LastRestoreTest(ctx, v.Deployments[i].Deployment)
		if err != nil {
			return nil, err
		}
		if rt != nil {
			v.RestoreTests = append(v.RestoreTests, *rt)
		}
	}
	return v, nil
}
