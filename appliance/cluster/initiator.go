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
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/handoff/config"
)

// The registration endpoint's URL paths: a joiner POSTs a Hello to
// ChallengePath, then its JoinRequest to RegistrationPath.
const (
	ChallengePath    = "/ssbuild/v2/challenge"
	RegistrationPath = "/ssbuild/v2/join"
)

// busyHeader marks a refusal because another join is under way. Like
// Retry-After it is not authenticated: it only makes a joiner wait (at
// most maxRetryAfter) instead of asking the next host.
const busyHeader = "Ssbuild-Busy"

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

// endpoint is the registration endpoint: one listener and server per
// Service, open while Run or Serve holds it.
type endpoint struct {
	addr   string
	srv    *http.Server
	served chan error
	users  int
}

// openEndpoint opens the registration endpoint on this host's address, or
// takes another hold on the open one; release lets it go, and the last
// release stops it (waiting for a handler that is issuing a token, so a
// stop never leaves LXD mid-request).
func (s *Service) openEndpoint() (release func(), err error) {
	s.epMu.Lock()
	defer s.epMu.Unlock()
	if s.ep == nil {
		addr := s.registrationAddress(s.cfg.Host.Address)
		ln, err := s.o.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("cluster: %s: registration endpoint: listen on %s: %w", s.cfg.Host.Name, addr, err)
		}
		srv := &http.Server{
			Handler:           s.reg,
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    8 << 10,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			TLSConfig:         registrationTLS(s.cert),
			ErrorLog:          quietLog(),
		}
		ep := &endpoint{addr: addr, srv: srv, served: make(chan error, 1)}
		go func() { ep.served <- srv.ServeTLS(ln, "", "") }()
		s.ep = ep
	}
	s.ep.users++
	var once sync.Once
	return func() { once.Do(s.releaseEndpoint) }, nil
}

func (s *Service) releaseEndpoint() {
	s.epMu.Lock()
	ep := s.ep
	ep.users--
	if ep.users > 0 {
		s.epMu.Unlock()
		return
	}
	s.ep = nil
	s.epMu.Unlock()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ep.srv.Shutdown(sctx)
	<-ep.served
}

// Serve keeps the registration endpoint open until ctx ends, alongside Run
// and after it returns: members serve registration for hosts added or
// re-installed later. It returns nil when ctx ends.
func (s *Service) Serve(ctx context.Context) error {
	release, err := s.openEndpoint()
	if err != nil {
		return err
	}
	defer release()
	<-ctx.Done()
	return nil
}

// registrationAddress is host:port of the registration endpoint of the
// host at addr (every host serves one on the same port).
func (s *Service) registrationAddress(addr string) string {
	a, _ := netip.ParseAddr(addr)
	return netip.AddrPortFrom(a, uint16(s.cfg.Cluster.RegistrationPort)).String()
}

// runInitiator: a member already goes on to serve and await formation;
// otherwise it joins the cluster another listed host answers for, or
// bootstraps one when a majority proved there is none (seek).
func (s *Service) runInitiator(ctx context.Context) error {
	member, err := s.isMember()
	if err != nil {
		return err
	}
	if member {
		// Bootstrapped (or joined) by an earlier run: never again.
		if err := s.reached(StepBootstrapped, "already clustered"); err != nil {
			return err
		}
	} else {
		bootstrapped, err := s.seek(ctx)
		if err != nil {
			return err
		}
		if !bootstrapped {
			if err := s.awaitOnline(ctx); err != nil {
				return err
			}
		}
	}
	if err := s.reached(StepServing, "https://"+s.registrationAddress(s.cfg.Host.Address)+RegistrationPath); err != nil {
		return err
	}
	return s.awaitFormation(ctx, s.reg)
}

// BootstrapMarker is the file in the state directory that says this host
// bootstrapped its LXD cluster (written just before the bootstrap, removed
// before any join), so a caller knows to bootstrap what goes with it (the
// registry) rather than join the others'.
const BootstrapMarker = "cluster-bootstrapped-here"

// Bootstrapped reports whether the host whose state directory is stateDir
// bootstrapped the LXD cluster it is in (BootstrapMarker).
func Bootstrapped(stateDir string) bool {
	_, err := os.Stat(filepath.Join(stateDir, BootstrapMarker))
	return err == nil
}

func (s *Service) setBootstrapMarker(on bool) error {
	if s.cfg.StateDir == "" {
		return nil
	}
	path := filepath.Join(s.cfg.StateDir, BootstrapMarker)
	if !on {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cluster: %s: %w", s.cfg.Host.Name, err)
		}
		return nil
	}
	if err := os.MkdirAll(s.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("cluster: %s: %w", s.cfg.Host.Name, err)
	}
	if err := os.WriteFile(path, []byte(s.cfg.Cluster.Name+"\n"), 0o644); err != nil {
		return fmt.Errorf("cluster: %s: %w", s.cfg.Host.Name, err)
	}
	return nil
}

// bootstrap is StepBootstrapped: only a server that is not clustered yet is
// bootstrapped, so a re-run can never make a second cluster.
func (s *Service) bootstrap(ctx context.Context, detail string) error {
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
	if err := s.setBootstrapMarker(true); err != nil {
		return err
	}
	op, err := s.o.LXD.UpdateCluster(api.ClusterPut{Cluster: api.Cluster{ServerName: name, Enabled: true}}, "")
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("cluster: %s: bootstrap the cluster (PUT /1.0/cluster): %w", name, err)
	}
	return s.reached(StepBootstrapped, "bootstrapped"+detail)
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
			// Tokens left by joiners that crashed before using them; the
			// endpoint keeps serving (a listed host may come back later)
			// and issues a fresh one on request.
			reg.mu.Lock()
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
	mu    sync.Mutex
	slot  string
	until time.Time
}

func (g *registrar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := g.s
	now := s.o.now()
	src, _ := netip.ParseAddrPort(r.RemoteAddr)
	from := src.Addr().Unmap()
	if r.Method != http.MethodPost || (r.URL.Path != RegistrationPath && r.URL.Path != ChallengePath && r.URL.Path != RotatePath) {
		http.NotFound(w, r)
		return
	}
	var name string
	var answer any
	var ref *refusal
	switch r.URL.Path {
	case ChallengePath:
		answer, ref = g.challenge(w, r, from, now)
	case RotatePath:
		var resp *RotateResponse
		var proved bool
		resp, proved, ref = g.rotate(w, r, from, now)
		if proved && ref != nil {
			g.refuse(w, from, name, ref, 0)
			return
		}
		if ref == nil {
			answer = resp
		}
	default:
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
	if strings.HasPrefix(ref.reason, "busy: ") {
		w.Header().Set(busyHeader, "1")
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
	signChallenge(s.currentKey(), s.cfg.Cluster.Name, h.Nonce, s.fp, c)
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
	if !verifyMAC(s.currentKey(), req.macFields(s.fp), req.MAC) {
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
		var why string
		if m, why = g.listedByJoiner(req); why != "" {
			return req, true, &refusal{http.StatusForbidden, fmt.Sprintf("%q is not a member of cluster %s: %s", req.Name, s.cfg.Cluster.Name, why)}
		}
	}
	if m.Address != req.Address || netip.MustParseAddr(m.Address) != from {
		return req, true, &refusal{http.StatusForbidden, fmt.Sprintf("%s registers from %s with address %s; its address is %s", req.Name, from, req.Address, m.Address)}
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || Fingerprint(r.TLS.PeerCertificates[0]) != req.Fingerprint {
		return req, true, &refusal{http.StatusUnauthorized, "TLS client certificate does not match the fingerprint in the proof"}
	}
	return req, true, nil
}

// issue gives the joiner a fresh token, one joiner at a time. A host in no
// cluster answers that instead, under its proof; a listed host whose old
// member is offline has that member removed first (replace).
func (g *registrar) issue(req *JoinRequest) (*JoinResponse, *refusal) {
	s := g.s
	g.mu.Lock()
	defer g.mu.Unlock()
	clustered, err := s.clustered()
	if err != nil {
		return nil, &refusal{http.StatusServiceUnavailable, "cannot read its cluster state: retry"}
	}
	if !clustered {
		resp := &JoinResponse{NoCluster: true, Fingerprint: s.fp}
		signNoCluster(s.currentKey(), req, resp)
		return resp, nil
	}
	members, err := s.o.LXD.GetClusterMembers()
	if err != nil {
		return nil, &refusal{http.StatusServiceUnavailable, "initiator cannot read its members: retry"}
	}
	status := map[string]string{}
	for _, m := range members {
		status[m.ServerName] = m.Status
	}
	if st, ok := status[req.Name]; ok {
		same := s.memberFingerprint(req.Name) == req.Fingerprint
		if st == "Online" && same {
			return nil, &refusal{http.StatusConflict, fmt.Sprintf("%s is already a member", req.Name)}
		}
		if st == "Online" {
			// LXD sees a member offline only after missed heartbeats
			// (cluster.offline_threshold, 20 s by default).
			return nil, &refusal{http.StatusServiceUnavailable, fmt.Sprintf("busy: %s is a member LXD still sees online; a re-installed host is let in once its old member is offline: retry", req.Name)}
		}
		if ref := g.replace(req, st); ref != nil {
			return nil, ref
		}
		delete(status, req.Name)
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
	signResponse(s.currentKey(), req, resp)
	return resp, nil
}

// replace force-removes the old LXD member of a listed host that proved the
// secret from its own address and asks to join again while LXD sees that
// member offline: its disk was replaced, or it died inside its join. What
// the member held is named first, since it is lost with it.
func (g *registrar) replace(req *JoinRequest, status string) *refusal {
	s := g.s
	name := req.Name
	lost := s.instancesOn(name)
	what := "no instances"
	if len(lost) > 0 {
		what = "its instances " + strings.Join(lost, ", ") + " (lost with it: restore them from backups)"
	}
	s.log.Info("%s: registration: %s registers again while its member is %s (re-installed, or died inside its join): removing the old member with %s", s.cfg.Host.Name, name, status, what)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.o.OnReplace != nil {
		if err := s.o.OnReplace(ctx, name, req.Address); err != nil {
			s.log.Info("%s: registration: forget %s before replacing it: %v", s.cfg.Host.Name, name, err)
			return &refusal{http.StatusServiceUnavailable, fmt.Sprintf("cannot forget the old %s yet: retry", name)}
		}
	}
	if err := s.o.LXD.DeleteClusterMember(name, true); err != nil && !api.StatusErrorCheck(err, http.StatusNotFound) {
		s.log.Info("%s: registration: remove the old member %s (DELETE /1.0/cluster/members/%s?force=1): %v", s.cfg.Host.Name, name, name, err)
		return &refusal{http.StatusServiceUnavailable, fmt.Sprintf("cannot remove the old member %s yet: retry", name)}
	}
	s.log.Info("%s: registration: old member %s removed", s.cfg.Host.Name, name)
	return nil
}

// memberFingerprint is the fingerprint of the server certificate LXD
// trusts for member name; empty when it cannot tell.
func (s *Service) memberFingerprint(name string) string {
	certs, err := s.o.LXD.GetCertificates()
	if err != nil {
		return ""
	}
	for _, c := range certs {
		if c.Type == api.CertificateTypeServer && c.Name == name {
			return c.Fingerprint
		}
	}
	return ""
}

// instancesOn lists project/instance of the instances on member name, as
// far as LXD tells.
func (s *Service) instancesOn(name string) []string {
	insts, err := s.o.LXD.GetInstancesAllProjects(api.InstanceTypeAny)
	if err != nil {
		return nil
	}
	var out []string
	for _, in := range insts {
		if in.Location == name {
			out = append(out, in.Project+"/"+in.Name)
		}
	}
	return out
}

// listedByJoiner lets in a host that this host's appliance.yaml does not
// list but a newer recipe revision does: the joiner's list (under its
// proof) must name it and every current LXD member at its address, so it
// is a later revision of this cluster's recipe, not an older or a foreign
// one. why says what is missing when it is not.
func (g *registrar) listedByJoiner(req *JoinRequest) (config.Member, string) {
	s := g.s
	listed := map[string]string{}
	for _, e := range req.Members {
		name, addr, _ := parseMember(e)
		listed[name] = addr.String()
	}
	self, ok := listed[req.Name]
	if !ok {
		return config.Member{}, "neither this host's recipe nor the joiner's lists it"
	}
	clustered, err := s.clustered()
	if err != nil || !clustered {
		return config.Member{}, "not in this host's recipe, and this host is in no cluster to check the joiner's recipe against"
	}
	members, err := s.o.LXD.GetClusterMembers()
	if err != nil {
		return config.Member{}, "cannot read the members to check the joiner's recipe against: retry"
	}
	var missing []string
	for _, m := range members {
		host := m.ServerName
		if u, err := url.Parse(m.URL); err == nil {
			if listed[m.ServerName] != u.Hostname() {
				missing = append(missing, m.ServerName+"="+u.Hostname())
			}
		} else if _, ok := listed[host]; !ok {
			missing = append(missing, host)
		}
	}
	if len(missing) > 0 {
		return config.Member{}, "the joiner's recipe does not list every member (" + strings.Join(missing, ", ") + "): it is not a later revision of this cluster's"
	}
	return config.Member{Name: req.Name, Address: self}, ""
}
