// Package cluster turns freshly installed hosts into one LXD cluster without
// anyone typing a command. Every host runs the same Service with its
// appliance.yaml and serves a registration endpoint for as long as it runs.
// A host that is not a member yet asks the other listed hosts, the
// initiator first, for a join token and joins the first cluster that
// answers with one. Only the initiator bootstraps, and only once a majority
// of the listed hosts, itself included, have proved (with the secret) that
// they are in no cluster: a re-installed initiator therefore joins the
// cluster the others still form, and one that boots while they are
// unreachable waits instead of making a second cluster (see mayBootstrap).
//
// Members keep serving registration after formation, for every host their
// appliance.yaml lists: a host listed but missing joins later, and a listed
// host whose old member LXD sees offline (it was re-installed, or died
// inside its join) has that member force-removed and joins again
// (Options.OnReplace lets the caller forget it elsewhere first).
// RotateSecret hands every member a new secret through the same endpoint
// (RotatePath); RemoveHost moves a live member's instances to the others
// and removes it.
//
// Trust: the cluster secret never crosses the wire, and the answering host
// proves it first (below, "initiator" is whichever host answers). Over TLS
// (the initiator's LXD server certificate; the joiner's as client
// certificate) a joiner POSTs a Hello, a fresh random
// nonce and nothing else, to https://<initiator>:<registrationPort>/ssbuild/v2/challenge.
// The initiator answers with a one-time nonce of its own (30 s, in a bounded
// table) and an HMAC-SHA256 (key: Argon2id of the secret, t=3, 64 MiB, p=4,
// salt from the cluster name) over both nonces, the cluster name, the
// protocol version and its certificate's fingerprint. The joiner checks it
// against the certificate it saw and only then POSTs its JoinRequest to
// /ssbuild/v2/join: its name, address, LXD certificate fingerprint and both
// nonces under its own MAC. An endpoint without the secret thus gets a
// nonce and nothing derived from the secret. No message carries a time:
// freshness is the initiator's nonce, so clocks need not agree. The
// initiator checks the proof first, so a valid one is never refused
// because of other requests; then it refuses replayed (challenge spent or
// unknown), unlisted and mismatched requests; malformed, oversized and
// badly proved requests count as failures, answered 429 from the fifth
// from one address (and past 120 a minute from all). A valid request gets a
// fresh join token and the initiator's MAC over both nonces, its
// fingerprint and the token; the joiner checks it and the token's cluster
// certificate before it joins, and obeys an unauthenticated Retry-After
// for at most 10 s. Errors and status lines say which check failed, never
// anything derived from the secret.
//
// Convergence: each step has a name (Step*) and an end state read from LXD
// before acting, so running the service again after a crash at any point
// ends in the same cluster:
//
//	lxd-initialised       initiator: lxdinit finds everything in place (or the host is a member);
//	                      a joiner leaves its pool, network and profile to its join
//	cluster-bootstrapped  GET /1.0/cluster is enabled with this host a member; never bootstrapped twice,
//	                      never while another listed host may hold a cluster
//	registration-serving  the endpoint listens (every host opens it at start;
//	                      the initiator reports it once it is a member)
//	token-issued          per joiner: older tokens for the name deleted, one fresh token pending
//	cluster-formed        every listed member online; no token pending
//	registered            joiner: holds a token from a member that proved the secret
//	joined                joiner: its LXD is clustered and lists itself (checked before every attempt)
//	member-online         joiner: the cluster sees it online
//
// Joins are serialised: a member gives one joiner a token at a time and
// tells the others to retry (503, Retry-After) until that one is online; a
// joiner that is told to wait does not ask the next host meanwhile.
// Options.FailAfter stops the service right after a named step, for tests.
package cluster

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/lxdinit"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Step is a named end state of the service.
type Step string

// Steps of the initiator, then of a joiner, in order.
const (
	StepLXDInitialised Step = "lxd-initialised"      // lxdinit.Apply has nothing left to do
	StepBootstrapped   Step = "cluster-bootstrapped" // LXD is clustered with this host as a member
	StepServing        Step = "registration-serving" // the registration endpoint listens
	StepTokenIssued    Step = "token-issued"         // a join token for one joiner exists (per request)
	StepClusterFormed  Step = "cluster-formed"       // every listed member is online, no token pending
	StepRegistered     Step = "registered"           // joiner: holds a token whose issuer proved the secret
	StepJoined         Step = "joined"               // joiner: LXD is a member of the initiator's cluster
	StepMemberOnline   Step = "member-online"        // joiner: the cluster sees it online
)

// Steps lists a role's steps in the order a run reaches them, for status
// displays and tests.
func Steps(initiator bool) []Step {
	if initiator {
		return []Step{StepLXDInitialised, StepBootstrapped, StepServing, StepTokenIssued, StepClusterFormed}
	}
	return []Step{StepLXDInitialised, StepRegistered, StepJoined, StepMemberOnline}
}

// Defaults of Options, and LXD's port on every host.
const (
	lxdPort               = "8443"
	defaultLXDDir         = "/var/lib/lxd"
	defaultJoinTimeout    = 2 * time.Minute
	defaultMaxFailures    = 5
	defaultBlock          = time.Minute
	defaultBackoffInitial = time.Second
	defaultBackoffMax     = 30 * time.Second
)

// ErrInjected is what Run returns when Options.FailAfter stopped it.
var ErrInjected = errors.New("stopped by fault injection")

// Host is what every part of a host's first boot is given, once: its
// appliance.yaml, the cluster secret, its LXD and how its steps are
// reported. Options here and the service's (appliance/service) embed it.
type Host struct {
	// Config is the host's appliance.yaml.
	Config *config.Appliance
	// Secret is the cluster secret (config.ReadSecret(Config.SecretFile)).
	Secret []byte
	// LXD is this host's LXD daemon (its unix socket).
	LXD lxd.InstanceServer
	// LXDDir holds the daemon's server.crt and server.key, the identity the
	// host proves and pins, and cluster.crt/.key (default /var/lib/lxd).
	LXDDir string

	// Progress gets one status line per step (and, in formation, per
	// registration attempt).
	Progress *progress.Reporter
	// FailAfter stops the run (it returns an error wrapping ErrInjected)
	// right after the named step is reached, for fault-injection tests.
	FailAfter Step
	// OnStep, when set, is called with every step reached (for tests and
	// the status command).
	OnStep func(Step)
}

// Options configure one host's cluster formation.
type Options struct {
	Host

	// Record is the host's first-boot status record when formation runs
	// inside the service (appliance/service), which owns it: steps go
	// through it, with its FailAfter and OnStep, and a failed Run is left
	// for the owner to record. When nil, New makes one from Host, and Run
	// records its failures.
	Record *Record

	// Listen creates the registration listener (default net.Listen); Dial
	// connects to other hosts (default a net.Dialer). The test bed passes
	// functions that work inside a host's network namespace.
	Listen func(network, address string) (net.Listener, error)
	Dial   func(ctx context.Context, network, address string) (net.Conn, error)

	// OnReplace, when set, is called by a member before it force-removes
	// the old LXD member of a listed host that registers again while that
	// member is offline (re-installed, or died inside its join). An error
	// refuses the registration for now (503): nothing was removed yet.
	OnReplace func(ctx context.Context, name, address string) error

	// BackoffInitial and BackoffMax shape a joiner's retries (1s doubling
	// to 30s by default).
	BackoffInitial, BackoffMax time.Duration
	// JoinTimeout is how long the initiator keeps the join slot for a
	// joiner it gave a token to before it lets another joiner in (2 min).
	JoinTimeout time.Duration
	// MaxFailures refused requests from one address block it for Block,
	// doubling with every further failure (5, 1 min).
	MaxFailures int
	Block       time.Duration

	now func() time.Time // for tests of time; default time.Now
}

// Service is one host's cluster formation.
type Service struct {
	o    Options
	cfg  *config.Appliance
	key  key
	cert tls.Certificate // the host's LXD server certificate and key
	fp   string          // its fingerprint
	log  *progress.Reporter

	rec       *Record
	ownRecord bool // made by New: Run records its failures

	keyMu sync.RWMutex // key changes when the secret is rotated (RotatePath)

	reg       *registrar
	epMu      sync.Mutex
	ep        *endpoint         // the registration endpoint while anyone holds it
	runCancel func(cause error) // stops the current Run (fault injection in the registrar)
}

// New checks the options and derives the HMAC key from the secret (about
// 0.2 s). The secret is not kept.
func New(o Options) (*Service, error) {
	if o.Config == nil || o.LXD == nil {
		return nil, errors.New("cluster: Config and LXD are required")
	}
	if len(o.Secret) < config.MinSecretLength {
		return nil, fmt.Errorf("cluster: secret shorter than %d bytes", config.MinSecretLength)
	}
	o.LXDDir = cmp.Or(o.LXDDir, defaultLXDDir)
	if o.Listen == nil {
		o.Listen = net.Listen
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	o.BackoffInitial = cmp.Or(o.BackoffInitial, defaultBackoffInitial)
	o.BackoffMax = cmp.Or(o.BackoffMax, defaultBackoffMax)
	o.JoinTimeout = cmp.Or(o.JoinTimeout, defaultJoinTimeout)
	o.MaxFailures = cmp.Or(o.MaxFailures, defaultMaxFailures)
	o.Block = cmp.Or(o.Block, defaultBlock)
	if o.now == nil {
		o.now = time.Now
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(o.LXDDir, "server.crt"), filepath.Join(o.LXDDir, "server.key"))
	if err != nil {
		return nil, fmt.Errorf("cluster: %s: LXD server certificate: %w", o.Config.Host.Name, err)
	}
	s := &Service{o: o, cfg: o.Config, cert: cert, log: cmp.Or(o.Progress, progress.Discard()), rec: o.Record}
	if s.rec == nil {
		s.rec = NewRecord(o.Host)
		s.rec.now = o.now
		s.ownRecord = true
	}
	s.fp = Fingerprint(cert.Leaf)
	s.key = deriveKey(o.Secret, o.Config.Cluster.Name)
	s.o.Secret = nil
	s.reg = newRegistrar(s, s.stopRun)
	return s, nil
}

// Run brings this host to its final step: StepClusterFormed on the
// initiator, StepMemberOnline on a joiner. It is safe to run again after a
// crash or an error at any point.
//
// Its status (step reached, last error) goes to the state directory's
// StatusFile as it goes, through its Record.
func (s *Service) Run(ctx context.Context) error {
	err := s.run(ctx)
	if err != nil && s.ownRecord {
		s.rec.Failed(err)
	}
	return err
}

func (s *Service) run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.epMu.Lock()
	s.runCancel = cancel
	s.epMu.Unlock()
	defer func() {
		s.epMu.Lock()
		s.runCancel = nil
		s.epMu.Unlock()
	}()
	if err := s.initLXD(ctx); err != nil {
		return err
	}
	// Every host answers the others' questions from the start: a host
	// that is in no cluster says so (with the secret), which is what lets
	// the initiator bootstrap.
	release, err := s.openEndpoint()
	if err != nil {
		if s.cfg.IsInitiator() {
			return err
		}
		// A joiner can still join; the initiator just counts it as unknown.
		s.log.Info("%s: %v; joining without it", s.cfg.Host.Name, err)
	} else {
		defer release()
	}
	err = s.runRole(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil && errors.Is(cause, ErrInjected) {
		return cause
	}
	return err
}

// stopRun stops the current Run with cause (fault injection after a token).
func (s *Service) stopRun(cause error) {
	s.epMu.Lock()
	defer s.epMu.Unlock()
	if s.runCancel != nil {
		s.runCancel(cause)
	}
}

func (s *Service) runRole(ctx context.Context) error {
	if s.cfg.IsInitiator() {
		return s.runInitiator(ctx)
	}
	return s.runJoiner(ctx)
}

// currentKey is the key of the cluster secret this host holds now.
func (s *Service) currentKey() key {
	s.keyMu.RLock()
	defer s.keyMu.RUnlock()
	return s.key
}

// reached reports a step through the host's Record and says whether fault
// injection stops here.
func (s *Service) reached(step Step, detail string) error {
	return s.rec.Reached(step, detail)
}

func (s *Service) httpsAddress() string {
	return net.JoinHostPort(s.cfg.Host.Address, lxdPort)
}

// initLXD is StepLXDInitialised: lxdinit reads the state of every item
// before it changes it, so a re-run does nothing.
func (s *Service) initLXD(ctx context.Context) error {
	c := s.cfg.Cluster
	lc := lxdinit.Config{
		HTTPSAddress: s.httpsAddress(),
		Pool:         lxdinit.StoragePool{Name: c.Storage.Pool, Driver: c.Storage.Driver, Source: c.Storage.Source},
	}
	for _, n := range c.Networks {
		if n.Type == "bridge" {
			lc.Network = lxdinit.Network{Name: n.Name, IPv4Address: cmp.Or(n.IPv4, "auto")}
			break
		}
	}
	clustered, err := s.clustered()
	if err != nil {
		return err
	}
	if clustered {
		// Pools and networks are the cluster's now; lxdinit's job is done.
		return s.reached(StepLXDInitialised, "already a cluster member")
	}
	if !s.cfg.IsInitiator() {
		// A joiner never bootstraps: its join brings the cluster's pool
		// (with this host's source, memberConfig), network and profiles,
		// as a plain `lxd init --preseed` join does. Making them here first
		// cost about 0.65 s of a 4th host's join for nothing.
		return s.reached(StepLXDInitialised, "nothing before the join: the cluster's pool, network and profile come with it")
	}
	steps, err := lxdinit.Apply(ctx, s.o.LXD, lc)
	if err != nil {
		return fmt.Errorf("cluster: %s: %w", s.cfg.Host.Name, err)
	}
	changed := 0
	for _, st := range steps {
		if st.Action != lxdinit.InPlace {
			changed++
		}
	}
	return s.reached(StepLXDInitialised, fmt.Sprintf("%d of %d items changed", changed, len(steps)))
}

// clustered reads whether this host's LXD is a cluster member.
func (s *Service) clustered() (bool, error) {
	c, _, err := s.o.LXD.GetCluster()
	if err != nil {
		return false, fmt.Errorf("cluster: %s: read cluster state (GET /1.0/cluster): %w", s.cfg.Host.Name, err)
	}
	return c.Enabled, nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
