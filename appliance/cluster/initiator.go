package cluster

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/canonical/lxd/shared/api"
)

// The registration endpoint's URL paths: a joiner POSTs a Hello to
// ChallengePath, then its JoinRequest to RegistrationPath.
const (
	ChallengePath    = "/ssbuild/v2/challenge"
	RegistrationPath = "/ssbuild/v2/join"
)

// maxRequestBytes bounds a request body: a valid one is under 700 bytes.
const maxRequestBytes = 4096

// defaultGlobalFailures is how many refused requests a minute, from all
// addresses together, the registrar handles fully before it answers the
// rest of that minute's failures 429 without a log line each.
const defaultGlobalFailures = 120

// registrationTLS is the endpoint's TLS: the initiator's LXD server
// certificate, and the joiner's as client certificate.
func registrationTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		// The joiner's LXD certificate is self-signed: ask for it and
		// check it against the fingerprint its proof names.
		ClientAuth: tls.RequireAnyClientCert,
		MinVersion: tls.VersionTLS13,
	}
}

func newRegistrar(s *Service, stop context.CancelCauseFunc) *registrar {
	return &registrar{s: s, stop: stop,
		limiter: failureLimiter{limit: s.o.MaxFailures, block: s.o.Block, globalLimit: defaultGlobalFailures}}
}

func (s *Service) runInitiator(ctx context.Context) error {
	if err := s.bootstrap(ctx); err != nil {
		return err
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	reg := newRegistrar(s, stop)
	addr := net.JoinHostPort(s.cfg.Host.Address, fmt.Sprint(s.cfg.Cluster.RegistrationPort))
	ln, err := s.o.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cluster: %s: registration endpoint: listen on %s: %w", s.cfg.Host.Name, addr, err)
	}
	srv := &http.Server{
		Handler:           reg,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		TLSConfig:         registrationTLS(s.cert),
		ErrorLog:          quietLog(),
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		// Wait for a handler that is issuing a token, so a stop never
		// leaves LXD mid-request.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-served
	}()
	if err := s.reached(StepServing, "https://"+addr+RegistrationPath); err != nil {
		return err
	}
	return s.awaitFormation(ctx, reg)
}

// bootstrap is StepBootstrapped: only a server that is not clustered yet is
// bootstrapped, so a re-run can never make a second cluster.
func (s *Service) bootstrap(ctx context.Context) error {
	name := s.cfg.Host.Name
	clustered, err := s.clustered()
	if err != nil {
		return err
	}
	if clustered {
		if _, _, err := s.o.LXD.GetClusterMember(name); err != nil {
			return fmt.Errorf("cluster: %s: clustered, but not as member %q (GET /1.0/cluster/members/%s): %w", name, name, name, err)
		}
		return s.reached(StepBootstrapped, "already clustered")
	}
	op, err := s.o.LXD.UpdateCluster(api.ClusterPut{Cluster: api.Cluster{ServerName: name, Enabled: true}}, "")
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("cluster: %s: bootstrap the cluster (PUT /1.0/cluster): %w", name, err)
	}
	return s.reached(StepBootstrapped, "bootstrapped")
}

// awaitFormation waits until every listed member is online, then removes
// tokens left by joiners that crashed before they used them.
func (s *Service) awaitFormation(ctx context.Context, reg *registrar) error {
	want := len(s.cfg.Cluster.Members)
	lastOnline := -1
	for {
		members, err := s.o.LXD.GetClusterMembers()
		if err != nil {
			return fmt.Errorf("cluster: %s: list members (GET /1.0/cluster/members): %w", s.cfg.Host.Name, err)
		}
		online := 0
		for _, m := range members {
			if _, listed := s.cfg.Cluster.Member(m.ServerName); listed && m.Status == "Online" {
				online++
			}
		}
		if online != lastOnline {
			s.log.Info("%s: %d of %d members online", s.cfg.Host.Name, online, want)
			lastOnline = online
		}
		if online == want {
			// No request may issue a token after the sweep.
			reg.mu.Lock()
			reg.closed = true
			// Only tokens for listed hosts: others are an operator's.
			n, err := s.deleteTokens(func(name string) bool {
				_, listed := s.cfg.Cluster.Member(name)
				return listed
			})
			reg.mu.Unlock()
			if err != nil {
				return err
			}
			return s.reached(StepClusterFormed, fmt.Sprintf("%d members online, %d stale tokens removed", online, n))
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return fmt.Errorf("cluster: %s: waiting for members (%d of %d online): %w", s.cfg.Host.Name, online, want, err)
		}
	}
}

// deleteTokens deletes the pending join tokens whose member name matches;
// it is how a re-issued token replaces an older one.
func (s *Service) deleteTokens(match func(name string) bool) (int, error) {
	ops, err := s.o.LXD.GetOperations()
	if err != nil {
		return 0, fmt.Errorf("cluster: %s: list join tokens (GET /1.0/operations): %w", s.cfg.Host.Name, err)
	}
	n := 0
	for _, op := range ops {
		// A used token's operation lingers as a success for a while.
		if op.Class != api.OperationClassToken || op.StatusCode != api.Running {
			continue
		}
		tok, err := op.ToClusterJoinToken()
		if err != nil || !match(tok.ServerName) {
			continue
		}
		if err := s.o.LXD.DeleteOperation(op.ID); err != nil && !api.StatusErrorCheck(err, http.StatusNotFound) {
			return n, fmt.Errorf("cluster: %s: delete join token for %s (DELETE /1.0/operations/%s): %w", s.cfg.Host.Name, tok.ServerName, op.ID, err)
		}
		n++
	}
	return n, nil
}

// quietLog drops net/http's own log lines (TLS handshake noise from
// scanners); refusals are reported through the progress reporter.
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

// registrar serves the registration endpoint.
type registrar struct {
	s          *Service
	stop       context.CancelCauseFunc
	challenges challenges
	limiter    failureLimiter

	// mu serialises token issuing; slot is the joiner that holds the one
	// join LXD is asked to do at a time.
	mu     sync.Mutex
	slot   string
	until  time.Time
	closed bool
}

func (g *registrar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := g.s
	now := s.o.now()
	src, _ := netip.ParseAddrPort(r.RemoteAddr)
	from := src.Addr().Unmap()
	if r.Method != http.MethodPost || (r.URL.Path != RegistrationPath && r.URL.Path != ChallengePath) {
		http.NotFound(w, r)
		return
	}
	var name string
	var answer any
	var ref *refusal
	if r.URL.Path == ChallengePath {
		answer, ref = g.challenge(w, r, from, now)
	} else {
		var req *JoinRequest
		var proved bool
		req, proved, ref = g.check(w, r, from, now)
		if req != nil {
			name = req.Name
		}
		if ref == nil {
			answer, ref = g.issue(req)
		}
		if proved && ref != nil {
			// The sender holds the secret: a member's misconfiguration or a
			// busy initiator, not guessing. Said as is, never counted.
			g.refuse(w, from, name, ref, 0)
			return
		}
	}
	if ref == nil {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
		return
	}
	blocked, started := g.limiter.fail(from, now)
	if started {
		s.log.Info("%s: registration: too many refused requests (from %s, or from all addresses this minute): their failures are answered 429 for %s; valid proofs still pass", s.cfg.Host.Name, from, blocked.Round(time.Second))
	}
	g.refuse(w, from, name, ref, blocked)
}

// refuse answers a refused request; blocked is how long its source's
// failures are answered 429 (zero when they are not).
func (g *registrar) refuse(w http.ResponseWriter, from netip.Addr, name string, ref *refusal, blocked time.Duration) {
	s := g.s
	if blocked > 0 {
		// No line per request while blocked: a flood would fill the log.
		w.Header().Set("Retry-After", fmt.Sprint(int(blocked.Seconds())+1))
		http.Error(w, "too many refused requests: "+ref.reason+"; retry later", http.StatusTooManyRequests)
		return
	}
	s.log.Info("%s: registration: refused request from %s (name %q): %s", s.cfg.Host.Name, from, cmp.Or(name, "?"), ref.reason)
	if ref.status == http.StatusServiceUnavailable {
		// Busy or stopping: worth a retry soon, not after a long backoff.
		w.Header().Set("Retry-After", "1")
	}
	http.Error(w, ref.reason, ref.status)
}

// readJSON decodes exactly one JSON value of the type into v.
func readJSON(w http.ResponseWriter, r *http.Request, v any, what string) *refusal {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err != nil {
		return &refusal{http.StatusRequestEntityTooLarge, fmt.Sprintf("request larger than %d bytes", maxRequestBytes)}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil || dec.More() {
		return &refusal{http.StatusBadRequest, "malformed request: not one JSON " + what}
	}
	return nil
}

// challenge answers a hello with a one-time nonce and the initiator's
// proof over both nonces and its certificate. It is not gated by the
// limiter: a joiner sharing an address with a source of junk still gets
// its challenge; the table of them is bounded (see challenges).
func (g *registrar) challenge(w http.ResponseWriter, r *http.Request, from netip.Addr, now time.Time) (*Challenge, *refusal) {
	s := g.s
	var h Hello
	if ref := readJSON(w, r, &h, "hello"); ref != nil {
		return nil, ref
	}
	if ref := checkHello(&h, s.cfg.Cluster.Name); ref != nil {
		return nil, ref
	}
	n, err := g.challenges.issue(from, h.Nonce, now)
	if err != nil {
		s.log.Info("%s: registration: %v", s.cfg.Host.Name, err)
		return nil, &refusal{http.StatusServiceUnavailable, "initiator cannot make a challenge: retry"}
	}
	c := &Challenge{Version: ProtocolVersion, Nonce: n}
	signChallenge(s.key, s.cfg.Cluster.Name, h.Nonce, s.fp, c)
	return c, nil
}

// check decodes and verifies a join request. The proof is checked before
// anything that depends on other requests (the challenge table, the
// limiter), so a valid proof is judged on its own; proved says it held.
// The challenge it names is spent either way: one attempt per challenge.
func (g *registrar) check(w http.ResponseWriter, r *http.Request, from netip.Addr, now time.Time) (req *JoinRequest, proved bool, ref *refusal) {
	s := g.s
	req = &JoinRequest{}
	if ref := readJSON(w, r, req, "join request"); ref != nil {
		return nil, false, ref
	}
	if ref := checkForm(req, s.cfg.Cluster.Name); ref != nil {
		return req, false, ref
	}
	fresh := g.challenges.take(req.InitiatorNonce, req.JoinerNonce, from, now)
	if !verifyMAC(s.key, req.macFields(s.fp), req.MAC) {
		return req, false, &refusal{http.StatusUnauthorized, "proof does not verify: wrong cluster secret or altered request"}
	}
	if !fresh {
		// What a replayed request gets: its challenge is spent. A joiner
		// that was too slow (or whose challenge made room for newer ones)
		// starts again with a new hello.
		return req, false, &refusal{http.StatusUnauthorized, "replayed or expired request: its challenge is unknown, used or expired; start again with a new hello"}
	}
	m, listed := s.cfg.Cluster.Member(req.Name)
	if !listed {
		return req, true, &refusal{http.StatusForbidden, fmt.Sprintf("%q is not a member of cluster %s", req.Name, s.cfg.Cluster.Name)}
	}
	if m.Address != req.Address || netip.MustParseAddr(m.Address) != from {
		return req, true, &refusal{http.StatusForbidden, fmt.Sprintf("%s registers from %s with address %s; its address is %s", req.Name, from, req.Address, m.Address)}
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || Fingerprint(r.TLS.PeerCertificates[0]) != req.Fingerprint {
		return req, true, &refusal{http.StatusUnauthorized, "TLS client certificate does not match the fingerprint in the proof"}
	}
	return req, true, nil
}

// issue gives the joiner a fresh token, one joiner at a time.
func (g *registrar) issue(req *JoinRequest) (*JoinResponse, *refusal) {
	s := g.s
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, &refusal{http.StatusConflict, "the cluster is formed: no more joins"}
	}
	members, err := s.o.LXD.GetClusterMembers()
	if err != nil {
		return nil, &refusal{http.StatusServiceUnavailable, "initiator cannot read its members: retry"}
	}
	status := map[string]string{}
	for _, m := range members {
		status[m.ServerName] = m.Status
	}
	if _, ok := status[req.Name]; ok {
		return nil, &refusal{http.StatusConflict, fmt.Sprintf("%s is already a member", req.Name)}
	}
	// A joiner is listed as soon as LXD accepts it, well before its join
	// is done: the slot is free only once it is online.
	if g.slot != "" && g.slot != req.Name && status[g.slot] != "Online" && s.o.now().Before(g.until) {
		return nil, &refusal{http.StatusServiceUnavailable, fmt.Sprintf("busy: %s is joining; retry", g.slot)}
	}
	// A fresh token every time: the older one may be in a crashed joiner's
	// hands, and LXD refuses a second token for the same name.
	if _, err := s.deleteTokens(func(name string) bool { return name == req.Name }); err != nil {
		s.log.Info("%s: registration: %v", s.cfg.Host.Name, err)
		return nil, &refusal{http.StatusServiceUnavailable, "initiator cannot replace the old token: retry"}
	}
	op, err := s.o.LXD.CreateClusterMember(api.ClusterMembersPost{ServerName: req.Name})
	if err != nil {
		s.log.Info("%s: registration: join token for %s (POST /1.0/cluster/members): %v", s.cfg.Host.Name, req.Name, err)
		return nil, &refusal{http.StatusServiceUnavailable, "initiator cannot issue a join token: retry"}
	}
	// A token operation stays pending until it is used: never wait on it.
	opAPI := op.Get()
	tok, err := opAPI.ToClusterJoinToken()
	if err != nil {
		return nil, &refusal{http.StatusServiceUnavailable, "initiator got no join token from LXD: retry"}
	}
	g.slot, g.until = req.Name, s.o.now().Add(s.o.JoinTimeout)
	if err := s.reached(StepTokenIssued, "for "+req.Name); err != nil {
		g.stop(err)
		return nil, &refusal{http.StatusServiceUnavailable, "initiator stopping: retry"}
	}
	resp := &JoinResponse{Token: tok.String(), Fingerprint: s.fp}
	signResponse(s.key, req, resp)
	return resp, nil
}
