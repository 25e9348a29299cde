package cluster

import (
	"bytes"
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

// RegistrationPath is the registration endpoint's URL path.
const RegistrationPath = "/ssbuild/v1/join"

// maxRequestBytes bounds a request body: a valid one is under 600 bytes.
const maxRequestBytes = 4096

func (s *Service) runInitiator(ctx context.Context) error {
	if err := s.bootstrap(ctx); err != nil {
		return err
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	reg := &registrar{s: s, stop: stop,
		limiter: failureLimiter{limit: s.o.MaxFailures, block: s.o.Block}}
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
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{s.cert},
			// The joiner's LXD certificate is self-signed: ask for it and
			// check it against the fingerprint its proof names.
			ClientAuth: tls.RequireAnyClientCert,
			MinVersion: tls.VersionTLS13,
		},
		ErrorLog: quietLog(),
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
	s       *Service
	stop    context.CancelCauseFunc
	nonces  nonceCache
	limiter failureLimiter

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
	if r.Method != http.MethodPost || r.URL.Path != RegistrationPath {
		http.NotFound(w, r)
		return
	}
	if left := g.limiter.blocked(from, now); left > 0 {
		s.log.Info("%s: registration: refused request from %s: too many refused requests, blocked for %s", s.cfg.Host.Name, from, left.Round(time.Second))
		w.Header().Set("Retry-After", fmt.Sprint(int(left.Seconds())+1))
		http.Error(w, "too many refused requests from your address: retry later", http.StatusTooManyRequests)
		return
	}
	req, ref := g.check(w, r, from, now)
	if ref == nil {
		var resp *JoinResponse
		resp, ref = g.issue(req)
		if ref == nil {
			g.limiter.succeed(from)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(resp)
			return
		}
	}
	if ref.status != http.StatusServiceUnavailable && ref.status != http.StatusConflict {
		g.limiter.fail(from, now)
	}
	name := "?"
	if req != nil {
		name = req.Name
	}
	s.log.Info("%s: registration: refused request from %s (name %q): %s", s.cfg.Host.Name, from, name, ref.reason)
	if ref.status == http.StatusServiceUnavailable {
		// Busy or stopping: worth a retry soon, not after a long backoff.
		w.Header().Set("Retry-After", "1")
	}
	http.Error(w, ref.reason, ref.status)
}

// check decodes and verifies a request; the order puts the cheap checks
// first and records the nonce only once the proof holds, so unauthenticated
// requests cannot fill the cache.
func (g *registrar) check(w http.ResponseWriter, r *http.Request, from netip.Addr, now time.Time) (*JoinRequest, *refusal) {
	s := g.s
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err != nil {
		return nil, &refusal{http.StatusRequestEntityTooLarge, fmt.Sprintf("request larger than %d bytes", maxRequestBytes)}
	}
	var req JoinRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		return nil, &refusal{http.StatusBadRequest, "malformed request: not one JSON join request"}
	}
	if ref := checkForm(&req, s.cfg.Cluster.Name); ref != nil {
		return &req, ref
	}
	if d := now.Sub(time.Unix(req.Timestamp, 0)); d > maxSkew || d < -maxSkew {
		return &req, &refusal{http.StatusUnauthorized, fmt.Sprintf("stale request: timestamp off by %s (more than %s): check the clocks", d.Round(time.Second), maxSkew)}
	}
	if !verifyMAC(s.key, req.macFields(), req.MAC) {
		return &req, &refusal{http.StatusUnauthorized, "proof does not verify: wrong cluster secret or altered request"}
	}
	// The cache lives as long as this process: a request replayed after a
	// restart passes this check but not the client certificate's, which
	// only the joiner's LXD key can present.
	if !g.nonces.add(req.Nonce, now) {
		return &req, &refusal{http.StatusUnauthorized, "replayed request: nonce already used"}
	}
	m, listed := s.cfg.Cluster.Member(req.Name)
	if !listed {
		return &req, &refusal{http.StatusForbidden, fmt.Sprintf("%q is not a member of cluster %s", req.Name, s.cfg.Cluster.Name)}
	}
	if m.Address != req.Address || netip.MustParseAddr(m.Address) != from {
		return &req, &refusal{http.StatusForbidden, fmt.Sprintf("%s registers from %s with address %s; its address is %s", req.Name, from, req.Address, m.Address)}
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || Fingerprint(r.TLS.PeerCertificates[0]) != req.Fingerprint {
		return &req, &refusal{http.StatusUnauthorized, "TLS client certificate does not match the fingerprint in the proof"}
	}
	return &req, nil
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
