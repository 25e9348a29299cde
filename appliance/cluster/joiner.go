package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/canonical/lxd/shared"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/handoff/config"
)

func (s *Service) runJoiner(ctx context.Context) error {
	if _, err := s.seek(ctx); err != nil {
		return err
	}
	return s.awaitOnline(ctx)
}

// mayBootstrap is the initiator's rule: bootstrap only when a majority of
// the listed hosts, itself included, proved they are in no cluster. An
// unreachable host, or one that does not prove the secret, counts for
// nothing: a cluster it may hold is not ruled out. As with etcd's initial
// quorum and Raft's elections, two majorities of one member list always
// share a host, so a cluster holding a majority of the listed hosts is
// never overlooked, and a wiped initiator that boots while the others are
// briefly unreachable waits for them instead of forming a second cluster.
// (k3s's --cluster-init bootstraps on that node's word alone, and a
// re-installed init node starts a cluster of its own.) The price: the first
// formation starts once a majority of the hosts run their service.
func mayBootstrap(listed, provedNoCluster int) bool {
	return 2*(provedNoCluster+1) > listed
}

// seek runs until this host is a member: it asks the other listed hosts
// for a join token (ask) and joins with the first one; on the initiator,
// once mayBootstrap allows it, it bootstraps instead and says so.
func (s *Service) seek(ctx context.Context) (bootstrapped bool, err error) {
	name := s.cfg.Host.Name
	backoff := s.o.BackoffInitial
	for attempt := 1; ; attempt++ {
		// Checked before every attempt: a join a crashed run started may
		// finish in LXD while this run retries.
		joined, err := s.isMember()
		if err != nil {
			return false, err
		}
		if joined {
			return false, s.reached(StepJoined, "already a member")
		}
		a := s.ask(ctx)
		listed := len(s.cfg.Cluster.Members)
		switch {
		case a.token != "":
			err = s.joinWith(ctx, a.token, a.from)
			if err == nil {
				return false, nil
			}
		case s.cfg.IsInitiator() && a.retry == nil && mayBootstrap(listed, a.noCluster):
			return true, s.bootstrap(ctx, fmt.Sprintf(" (%d of %d listed hosts, this one included, proved they are in no cluster)", a.noCluster+1, listed))
		default:
			err = a.err()
			if s.cfg.IsInitiator() && a.retry == nil {
				err = fmt.Errorf("%w; no bootstrap before %d of %d listed hosts (this one included) prove they are in no cluster", err, listed/2+1, listed)
			}
		}
		if errors.Is(err, ErrInjected) {
			return false, err
		}
		if ctx.Err() != nil {
			return false, fmt.Errorf("cluster: %s: gave up joining after %d attempts: %w (last error: %v)", name, attempt, ctx.Err(), err)
		}
		wait := backoff
		switch {
		case a.retry != nil:
			// A member said when (busy with another joiner); capped at
			// maxRetryAfter, since nothing proves who said it.
			wait = a.retry.after
		case a.noCluster > 0:
			// A cluster is being formed: ask again soon.
			wait = s.o.BackoffInitial
		default:
			backoff = min(2*backoff, s.o.BackoffMax)
		}
		s.log.Info("%s: attempt %d to join failed: %v; next attempt in %s", name, attempt, err, wait)
		if serr := sleep(ctx, wait); serr != nil {
			return false, fmt.Errorf("cluster: %s: gave up joining after %d attempts: %w (last error: %v)", name, attempt, serr, err)
		}
	}
}

// answers is what the other listed hosts said to one round of asking.
type answers struct {
	token, from string           // a join token, and the host that gave it
	noCluster   int              // hosts that proved they are in no cluster
	retry       *retryAfterError // a host said when to ask again
	said        []string         // per host, what it answered
}

func (a *answers) err() error {
	if a.retry != nil {
		return a.retry
	}
	return fmt.Errorf("no join token: %s", strings.Join(a.said, "; "))
}

// ask asks the other listed hosts for a join token, the initiator first,
// until one gives one or says another join is under way there: then it
// waits rather than ask the next, so joins stay one at a time. Other
// refusals (a member whose LXD does not answer, a rate limit) pass on to
// the next host.
func (s *Service) ask(ctx context.Context) answers {
	var a answers
	for _, m := range s.others() {
		tok, err := s.register(ctx, s.registrationAddress(m.Address))
		var ra *retryAfterError
		switch {
		case err == nil:
			a.token, a.from = tok, m.Name
			return a
		case errors.Is(err, errNoCluster):
			a.noCluster++
			a.said = append(a.said, m.Name+": in no cluster")
		case errors.As(err, &ra):
			// Never a bootstrap after this: the host may be a member.
			a.retry = ra
			a.said = append(a.said, m.Name+": "+err.Error())
			if ra.busy {
				// Joins stay one at a time: wait for that one.
				return a
			}
		default:
			a.said = append(a.said, m.Name+": "+err.Error())
		}
		if ctx.Err() != nil {
			break
		}
	}
	return a
}

// memberList is this host's recipe's hosts as name=address, for a
// JoinRequest.
func (s *Service) memberList() []string {
	var out []string
	for _, m := range s.cfg.Cluster.Members {
		out = append(out, m.Name+"="+m.Address)
	}
	return out
}

// others lists the listed hosts other than this one, the initiator first.
func (s *Service) others() []config.Member {
	var out []config.Member
	c := s.cfg.Cluster
	if m, ok := c.Member(c.Initiator); ok && m.Name != s.cfg.Host.Name {
		out = append(out, m)
	}
	for _, m := range c.Members {
		if m.Name != s.cfg.Host.Name && m.Name != c.Initiator {
			out = append(out, m)
		}
	}
	return out
}

// isMember is the end state of StepJoined: this LXD is clustered and knows
// itself as a member under its own name.
func (s *Service) isMember() (bool, error) {
	clustered, err := s.clustered()
	if err != nil || !clustered {
		return false, err
	}
	name := s.cfg.Host.Name
	if _, _, err := s.o.LXD.GetClusterMember(name); err != nil {
		return false, fmt.Errorf("cluster: %s: clustered, but not as member %q (GET /1.0/cluster/members/%s): %w", name, name, name, err)
	}
	return true, nil
}

// joinWith is StepRegistered and StepJoined with a token from member from.
func (s *Service) joinWith(ctx context.Context, token, from string) error {
	if err := s.reached(StepRegistered, "join token received from "+from); err != nil {
		return err
	}
	// This host joins a cluster: it bootstrapped none (an earlier attempt
	// that failed before LXD bootstrapped leaves no cluster behind).
	if err := s.setBootstrapMarker(false); err != nil {
		return err
	}
	if err := s.join(ctx, token); err != nil {
		// LXD may have joined and failed after; the state says.
		if ok, _ := s.isMember(); !ok {
			return err
		}
	}
	return s.reached(StepJoined, "member of cluster "+s.cfg.Cluster.Name)
}

// maxRetryAfter caps a Retry-After the joiner obeys: the answer carrying it
// is not authenticated, so whoever can answer in the initiator's place must
// not be able to park the joiner for long.
const maxRetryAfter = 10 * time.Second

// register asks the initiator for a join token. The initiator proves the
// secret first: the joiner sends a fresh nonce, checks the initiator's MAC
// over both nonces and the certificate its TLS peer served, and only then
// sends its own proof. An endpoint without the secret gets the nonce and
// nothing else.
func (s *Service) register(ctx context.Context, regAddr string) (string, error) {
	client := s.registrationClient()
	hello, err := newHello(s.cfg.Cluster.Name)
	if err != nil {
		return "", err
	}
	var ch Challenge
	peerFP, err := s.post(ctx, client, "https://"+regAddr+ChallengePath, hello, &ch)
	if err != nil {
		return "", err
	}
	if ch.Version != ProtocolVersion || !verifyMAC(s.currentKey(), challengeFields(s.cfg.Cluster.Name, hello.Nonce, ch.Nonce, peerFP), ch.MAC) {
		return "", errProofMismatch
	}
	req := newJoinRequest(s.currentKey(), s.cfg.Cluster.Name, s.cfg.Host.Name, s.cfg.Host.Address, s.fp, hello, &ch, peerFP, s.memberList()...)
	var jr JoinResponse
	fp, err := s.post(ctx, client, "https://"+regAddr+RegistrationPath, req, &jr)
	if err != nil {
		return "", err
	}
	// A new connection: it must reach the peer that proved the secret.
	if fp != peerFP || jr.Fingerprint != peerFP {
		return "", errors.New("the registration endpoint's certificate is not the one the initiator's proof covers")
	}
	if jr.NoCluster {
		if !verifyMAC(s.currentKey(), noClusterFields(req, &jr), jr.MAC) {
			return "", errProofMismatch
		}
		return "", errNoCluster
	}
	if !verifyMAC(s.currentKey(), responseFields(req, &jr), jr.MAC) {
		return "", errProofMismatch
	}
	return jr.Token, nil
}

// registrationClient talks to other hosts' registration endpoints with
// this host's LXD certificate.
func (s *Service) registrationClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: s.o.Dial,
			// The peer's certificate is not known beforehand: it is pinned
			// by the fingerprint its proof covers.
			TLSClientConfig: &tls.Config{
				InsecureSkipVerify: true,
				Certificates:       []tls.Certificate{s.cert},
				MinVersion:         tls.VersionTLS13,
			},
			DisableKeepAlives: true,
		},
	}
}

// post sends one registration message and decodes the answer; it returns
// the fingerprint of the certificate the peer served.
func (s *Service) post(ctx context.Context, client *http.Client, url string, msg, answer any) (string, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return "", err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(hreq)
	if err != nil {
		return "", fmt.Errorf("registration endpoint not reachable: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("registration answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("registration refused (%s): %s", resp.Status, strings.TrimSpace(string(data)))
		if secs, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && secs > 0 {
			return "", &retryAfterError{after: min(time.Duration(secs)*time.Second, maxRetryAfter), busy: resp.Header.Get(busyHeader) != "", err: err}
		}
		return "", err
	}
	if err := json.Unmarshal(data, answer); err != nil {
		return "", fmt.Errorf("registration answer: %w", err)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return "", errors.New("registration answer without a TLS certificate")
	}
	return Fingerprint(resp.TLS.PeerCertificates[0]), nil
}

// retryAfterError is a refusal that says when to try again.
type retryAfterError struct {
	after time.Duration
	busy  bool // another join is under way there
	err   error
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// join joins this host's LXD with the token, after checking that the join
// address serves the cluster certificate the token names.
func (s *Service) join(ctx context.Context, token string) error {
	name := s.cfg.Host.Name
	tok, err := shared.JoinTokenDecode(token)
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	if tok.ServerName != name {
		return fmt.Errorf("join token is for %q, not %q", tok.ServerName, name)
	}
	var clusterAddr string
	var clusterCert *x509.Certificate
	var lastErr error
	for _, addr := range tok.Addresses {
		cert, err := s.remoteCertificate(ctx, addr)
		if err != nil {
			lastErr = err
			continue
		}
		if Fingerprint(cert) != tok.Fingerprint {
			lastErr = fmt.Errorf("%s serves a certificate other than the cluster's in the token", addr)
			continue
		}
		clusterAddr, clusterCert = addr, cert
		break
	}
	if clusterCert == nil {
		return fmt.Errorf("no join address in the token serves the cluster certificate: %v", lastErr)
	}
	put := api.ClusterPut{
		Cluster:            api.Cluster{ServerName: name, Enabled: true, MemberConfig: s.memberConfig()},
		ClusterAddress:     clusterAddr,
		ClusterCertificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: clusterCert.Raw})),
		ServerAddress:      s.httpsAddress(),
		// LXD 5.0.2 with this client: the whole token goes here (see the
		// testbed package doc).
		ClusterPassword: token,
	}
	op, err := s.o.LXD.UpdateCluster(put, "")
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("join cluster via %s (PUT /1.0/cluster): %w", clusterAddr, err)
	}
	return nil
}

// memberConfig is this host's own part of the cluster's pools and networks.
func (s *Service) memberConfig() []api.ClusterMemberConfigKey {
	c := s.cfg.Cluster
	var mc []api.ClusterMemberConfigKey
	if c.Storage.Source != "" {
		mc = append(mc, api.ClusterMemberConfigKey{Entity: "storage-pool", Name: c.Storage.Pool, Key: "source", Value: c.Storage.Source})
	}
	for _, n := range c.Networks {
		if n.Parent != "" {
			mc = append(mc, api.ClusterMemberConfigKey{Entity: "network", Name: n.Name, Key: "parent", Value: n.Parent})
		}
	}
	return mc
}

func (s *Service) remoteCertificate(ctx context.Context, addr string) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := s.o.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	// Checked against the token's fingerprint by the caller.
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS to %s: %w", addr, err)
	}
	return conn.ConnectionState().PeerCertificates[0], nil
}

// awaitOnline is StepMemberOnline: the cluster sees this member online.
func (s *Service) awaitOnline(ctx context.Context) error {
	name := s.cfg.Host.Name
	deadline := time.Now().Add(2 * time.Minute)
	for {
		m, _, err := s.o.LXD.GetClusterMember(name)
		if err == nil && m.Status == "Online" {
			return s.reached(StepMemberOnline, strings.Join(m.Roles, ","))
		}
		if time.Now().After(deadline) {
			status := "unknown"
			if m != nil {
				status = m.Status
			}
			return fmt.Errorf("cluster: %s: member not online after 2 minutes (status %s, GET /1.0/cluster/members/%s: %v)", name, status, name, err)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return fmt.Errorf("cluster: %s: waiting to be online: %w", name, err)
		}
	}
}
