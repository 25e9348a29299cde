// Package service is what `ssbuild appliance run` does on every host at
// first boot, and on every boot after: form the LXD cluster
// (appliance/cluster), then run this host's node of the registry
// (appliance/registry) until it is stopped.
//
// Steps after the cluster's (cluster.Steps), each with an end state that a
// re-run checks or re-establishes:
//
//	registry-open   this host's registry node is part of the registry cluster:
//	                the initiator bootstraps it, every other host joins it; a
//	                restart re-uses the node in <stateDir>/registry
//	host-recorded   the registry holds this host's row (name, LXD address,
//	                step, server-certificate fingerprint) and, for a joiner,
//	                one successful join attempt (recorded only if none is)
//	serving         <stateDir>/service.sock answers status requests; the
//	                host's row is rewritten every Heartbeat (with the step
//	                and last error of the status file), so its update
//	                time says the host and the registry are alive; the
//	                holder of the registry's replica lease refreshes every
//	                deployed instance's volume replicas on another member
//	                every backup.snapshots.minutes (ReplicaLease)
//	deployed        only on a host whose appliance.yaml has a deploy section
//	                (the installer gives every host one; only the initiator's
//	                names the base image): while serving, once every
//	                configured member is an online LXD member and the base
//	                image is in LXD or on this host, the host that holds the
//	                registry's deploy lease deploys the recipe's
//	                deployments (appliance/deploy) with their
//	                secrets and revisions in the registry
//	                (appliance/deploystate; an older ssbuild's files in
//	                <stateDir>/deploy are imported once); a failure is the
//	                host's last error and is retried with backoff while the
//	                registry keeps being served. It runs on every start: a
//	                reconcile, with 0 mutations when nothing changed, unless
//	                another member deployed the same recipe since this
//	                host's service started
//
// A host that is an LXD member and has run its registry node before opens
// it at once and runs cluster formation alongside: a restarted initiator
// would otherwise serve no registry while a lost member keeps formation
// waiting for every member to be online.
//
// Trust: registry nodes talk TLS with LXD's cluster certificate and key
// (cluster.crt, cluster.key in the LXD directory) and accept exactly that
// certificate (registry.PinnedTLS). Every member holds that key once it has
// joined the LXD cluster, and nobody else does, so membership of the LXD
// cluster (which the cluster secret gates) is what admits a registry node.
// Before using it, the service checks that the file is the certificate
// LXD serves, so a stale file cannot pin the wrong cluster.
//
// The registry follows LXD: only the host that bootstrapped the LXD cluster
// (cluster.Bootstrapped) bootstraps the registry; every other host, a
// re-installed initiator included, joins the registry nodes of the other
// listed hosts. The cluster's registration endpoint is served for as long
// as the service runs (cluster.Service.Serve); when a member replaces a
// re-installed host's old LXD member, it first removes that host's old
// registry node and row (OnReplace), so the fresh host joins both again
// under its name with one node and one row.
package service

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Steps after cluster formation (see the package doc).
const (
	StepRegistryOpen cluster.Step = "registry-open"
	StepHostRecorded cluster.Step = "host-recorded"
	StepServing      cluster.Step = "serving"
	StepDeployed     cluster.Step = "deployed" // a host with a deploy section only
)

// Steps lists a role's steps in order: the cluster's, then the service's
// (without StepDeployed, which only a host with a deploy section reaches).
func Steps(initiator bool) []cluster.Step {
	return append(cluster.Steps(initiator), StepRegistryOpen, StepHostRecorded, StepServing)
}

// Host states written to the registry.
const (
	StateOnline = "online" // the service serves; its row is refreshed every Heartbeat
)

// Names in the state directory.
const (
	RegistryDir = "registry"     // the registry node's Raft log and identity
	SocketName  = "service.sock" // the status socket
	// StatusFile holds the last step and error, also without the registry:
	// formation's and the service's, one file (cluster.StatusFile).
	StatusFile = cluster.StatusFile
)

// DefaultHeartbeat is how often a serving host rewrites its registry row.
const DefaultHeartbeat = 5 * time.Second

// ErrInjected is returned when Options.FailAfter stopped the service.
var ErrInjected = cluster.ErrInjected

// Options configure one host's first boot, formation included: the
// fields every part is given once (cluster.Host), then the service's own.
// Host.FailAfter may name a cluster step too; when formation runs
// alongside the registry (see the package doc), a cluster step stops only
// formation. Host.Secret is handed to formation and never kept.
type Options struct {
	cluster.Host

	// Cluster, when set, adjusts the cluster formation's options (tests
	// shorten its backoff).
	Cluster func(*cluster.Options)
	// Heartbeat is how often the host's registry row is rewritten
	// (DefaultHeartbeat).
	Heartbeat time.Duration
	// DeployBackoff is the wait before a failed deploy is retried, doubled
	// up to DeployBackoffMax (DefaultDeployBackoff, DefaultDeployBackoffMax).
	DeployBackoff, DeployBackoffMax time.Duration
	// ReplicaInterval, when set, replaces the recipe's
	// backup.snapshots.minutes as the replica refresh interval.
	ReplicaInterval time.Duration
}

// Run brings the host through every step and serves until ctx ends; it
// then closes the registry node (handing over leadership) and returns nil.
// Stopped before it serves, it returns an error wrapping ctx's. It is safe
// to run again after a crash at any point.
func Run(ctx context.Context, o Options) error {
	if o.Config == nil || o.LXD == nil {
		return errors.New("service: Config and LXD are required")
	}
	o.LXDDir = cmp.Or(o.LXDDir, "/var/lib/lxd")
	o.Heartbeat = cmp.Or(o.Heartbeat, DefaultHeartbeat)
	s := &svc{o: o, cfg: o.Config, log: cmp.Or(o.Progress, progress.Discard()), started: time.Now()}
	// One record for the whole first boot, formation's steps included; it
	// starts from the state directory's (an earlier ssbuild's files too).
	s.rec = cluster.NewRecord(o.Host)
	err := s.run(ctx)
	if err != nil && ctx.Err() == nil {
		s.rec.Failed(err) // a stop is not an error worth showing in status
	}
	return err
}

type svc struct {
	o   Options
	cfg *config.Appliance
	log *progress.Reporter
	// started is when this service started: a deploy another member ended
	// after it is this host's first deploy too (measured from the start,
	// not from serving, which a slow registry join delays).
	started time.Time

	key    secrets.Key                       // opens deployment secrets an older ssbuild sealed
	kek    secrets.KEK                       // unwraps the data key that seals them now
	formed <-chan error                      // formation's result when it runs alongside the registry
	reg    atomic.Pointer[registry.Registry] // once open, for OnReplace

	rec *cluster.Record // the host's first-boot status, formation's steps included

	replicas replicator // one replica pass at a time
}

// resuming reports whether this host is an LXD cluster member whose
// registry node has started before (its identity is in the directory).
func (s *svc) resuming() bool {
	if _, err := os.Stat(filepath.Join(s.cfg.StateDir, RegistryDir, "info.yaml")); err != nil {
		return false
	}
	c, _, err := s.o.LXD.GetCluster()
	return err == nil && c.Enabled
}

func (s *svc) run(ctx context.Context) error {
	name := s.cfg.Host.Name
	var err error
	// Formation gets the host's fields and this service's record: one
	// record, one status file for the whole first boot.
	co := cluster.Options{Host: s.o.Host, Record: s.rec, OnReplace: s.forget}
	if s.o.Cluster != nil {
		s.o.Cluster(&co)
	}
	// Only the keys derived for the deployment secrets stay in memory.
	if s.key, err = secrets.DeriveKey(s.o.Secret, s.cfg.Cluster.Name); err != nil {
		return fmt.Errorf("service: %s: %w", name, err)
	}
	if s.kek, err = secrets.DeriveKEK(s.o.Secret, s.cfg.Cluster.Name); err != nil {
		return fmt.Errorf("service: %s: %w", name, err)
	}
	s.o.Secret = nil
	formation, err := cluster.New(co)
	if err != nil {
		return err
	}
	// Registration is served while the service runs, not only during
	// formation: hosts added to the recipe later, and re-installed ones,
	// join through any member that is up.
	sctx, stopServing := context.WithCancel(ctx)
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		if err := formation.Serve(sctx); err != nil {
			s.log.Info("%s: %v", name, err)
		}
	}()
	defer func() {
		stopServing()
		<-serveDone
	}()
	if s.resuming() {
		// This host has served its registry node before: serve it again at
		// once, so a restarted initiator answers even while a lost member
		// keeps its formation waiting; formation runs alongside.
		s.log.Info("%s: registry node found: serving it while cluster formation runs", name)
		fctx, stopFormation := context.WithCancel(ctx)
		formed := make(chan error, 1)
		go func() {
			formed <- formation.Run(fctx)
			close(formed) // the deferred receive below returns after heartbeat took the result
		}()
		defer func() {
			stopFormation()
			<-formed
		}()
		s.formed = formed
	} else if err := formation.Run(ctx); err != nil {
		return err
	}

	reg, err := s.openRegistry(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// Leadership goes to another node first, so the others keep
		// answering without an election.
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := reg.Close(cctx); err != nil {
			s.log.Info("%s: registry: %v", name, err)
		} else {
			s.log.Info("%s: registry node closed", name)
		}
	}()
	s.reg.Store(reg)
	defer s.reg.Store(nil)
	if err := s.reached(StepRegistryOpen, reg.Address()); err != nil {
		return err
	}
	if err := s.recordHost(ctx, reg); err != nil {
		return err
	}
	return s.serve(ctx, reg)
}

// reached records a step of the service's own and says whether fault
// injection stops here.
func (s *svc) reached(step cluster.Step, detail string) error {
	return s.rec.Reached(step, detail)
}

// openRegistry starts this host's node: TLS pinned to the LXD cluster
// certificate, bootstrapped by the host that bootstrapped LXD, joined by
// every other through any member's node (the initiator's may be the one
// that is down, or the one re-installed).
func (s *svc) openRegistry(ctx context.Context) (*registry.Registry, error) {
	name := s.cfg.Host.Name
	cert, leaf, err := s.clusterCertificate()
	if err != nil {
		return nil, err
	}
	c := s.cfg.Cluster
	rc := registry.Config{
		Dir:     filepath.Join(s.cfg.StateDir, RegistryDir),
		Address: c.RegistryAddress(s.cfg.Host.Address),
		TLS:     registry.PinnedTLS(cert, leaf),
		Logf: func(format string, args ...any) {
			s.log.Info("%s: registry: %s", name, fmt.Sprintf(format, args...))
		},
	}
	bootstrap := s.cfg.IsInitiator() && cluster.Bootstrapped(s.cfg.StateDir)
	if !bootstrap {
		for _, m := range c.Members {
			if m.Name != name {
				rc.Join = append(rc.Join, c.RegistryAddress(m.Address))
			}
		}
	}
	_, statErr := os.Stat(filepath.Join(rc.Dir, "info.yaml"))
	switch {
	case statErr == nil:
		s.log.Info("%s: registry: starting the node in %s on %s", name, rc.Dir, rc.Address)
	case bootstrap:
		s.log.Info("%s: registry: bootstrapping on %s", name, rc.Address)
	default:
		s.log.Info("%s: registry: joining via %s", name, strings.Join(rc.Join, ", "))
	}
	reg, err := registry.Open(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("service: %s: %w", name, err)
	}
	return reg, nil
}

// clusterCertificate loads LXD's cluster certificate and key and checks the
// certificate is the one this host's LXD serves as a cluster member.
func (s *svc) clusterCertificate() (tls.Certificate, *x509.Certificate, error) {
	name := s.cfg.Host.Name
	crt, key := filepath.Join(s.o.LXDDir, "cluster.crt"), filepath.Join(s.o.LXDDir, "cluster.key")
	cert, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("service: %s: LXD cluster certificate for the registry: %w", name, err)
	}
	server, _, err := s.o.LXD.GetServer()
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("service: %s: read LXD's certificate (GET /1.0): %w", name, err)
	}
	block, _ := pem.Decode([]byte(server.Environment.Certificate))
	if block == nil || cluster.Fingerprint(cert.Leaf) != registry.Fingerprint(block.Bytes) {
		return tls.Certificate{}, nil, fmt.Errorf("service: %s: %s is not the certificate LXD serves (GET /1.0 environment.certificate): is LXD clustered?", name, crt)
	}
	return cert, cert.Leaf, nil
}

// serverFingerprint is the fingerprint of the host's own LXD server
// certificate, the one it proved at registration.
func (s *svc) serverFingerprint() (string, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(s.o.LXDDir, "server.crt"), filepath.Join(s.o.LXDDir, "server.key"))
	if err != nil {
		return "", fmt.Errorf("service: %s: LXD server certificate: %w", s.cfg.Host.Name, err)
	}
	return cluster.Fingerprint(cert.Leaf), nil
}

// writeTimeout bounds one registry write: longer than a failover (up to
// about 7 s here, see appliance/registry/README.md).
const writeTimeout = 30 * time.Second

// recordHost is StepHostRecorded: an upsert of the host's row, and a
// joiner's join attempt only when the registry holds none that succeeded.
func (s *svc) recordHost(ctx context.Context, reg *registry.Registry) error {
	name := s.cfg.Host.Name
	fp, err := s.serverFingerprint()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	h := registry.Host{
		Name: name, Address: net.JoinHostPort(s.cfg.Host.Address, "8443"),
		State: StateOnline, Step: string(StepHostRecorded), Fingerprint: fp,
	}
	if err := reg.PutHost(ctx, h); err != nil {
		return fmt.Errorf("service: %s: record host: %w", name, err)
	}
	detail := "host row written"
	if !s.cfg.IsInitiator() {
		attempts, err := reg.JoinAttempts(ctx, name)
		if err != nil {
			return fmt.Errorf("service: %s: %w", name, err)
		}
		joined := false
		for _, a := range attempts {
			joined = joined || a.Result == registry.JoinSucceeded
		}
		if !joined {
			if _, err := reg.RecordJoinAttempt(ctx, registry.JoinAttempt{Host: name, Result: registry.JoinSucceeded,
				Detail: fmt.Sprintf("member of LXD cluster %s, registry node %s", s.cfg.Cluster.Name, reg.Address())}); err != nil {
				return fmt.Errorf("service: %s: %w", name, err)
			}
			detail += ", join recorded"
		}
	}
	return s.reached(StepHostRecorded, detail)
}

// forget is cluster.Options.OnReplace: before a member force-removes the
// old LXD member of a re-installed host, the registry drops that host's
// node (a fresh node joins under the same address) and its row (pinned to
// the old certificate). Without an open registry it refuses, and the host
// is told to retry.
func (s *svc) forget(ctx context.Context, name, address string) error {
	reg := s.reg.Load()
	if reg == nil {
		return errors.New("this host's registry node is not open yet")
	}
	node := s.cfg.Cluster.RegistryAddress(address)
	// Both steps are idempotent: retried while the registry elects a new
	// leader (the lost host may have been the leader, and a call cut by
	// its loss ends in EOF, which the registry does not retry itself).
	for {
		err := reg.RemoveNode(ctx, node)
		if err == nil {
			err = reg.DeleteHost(ctx, name)
		}
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("service: %s: %w", s.cfg.Host.Name, err)
		case <-time.After(time.Second):
		}
	}
	s.log.Info("%s: registry: forgot %s (node %s and its row) before it joins again", s.cfg.Host.Name, name, node)
	return nil
}
