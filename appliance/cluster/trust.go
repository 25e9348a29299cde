package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters that stretch the cluster secret into the HMAC key.
// They are part of the protocol: every host must use the same ones, so they
// are fixed here, not configurable. RFC 9106's second recommended option
// (t=3, 64 MiB, p=4): about 0.2 s once per service start, and every guess of
// an attacker who captured a request costs the same.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
	keyLength    = 32
	// ProtocolVersion is the version of the registration messages. 2: the
	// initiator proves the secret first, over both nonces (challenge and
	// response); no timestamps.
	ProtocolVersion = 2
)

// A challenge is good for challengeTTL on the initiator's own clock, which
// is all the freshness the protocol needs: no clock is compared with
// another host's.
const challengeTTL = 30 * time.Second

// Bounds on outstanding challenges. A joiner needs one at a time; the
// per-address bound keeps one source from taking the whole table, the
// global one bounds memory whatever the number of sources. When full, the
// oldest goes: the newest asker always gets a challenge.
const (
	maxChallengesPerAddr = 8
	maxChallenges        = 1024
)

// key is the HMAC key derived from the cluster secret. It has no String
// method that shows it: fmt prints it as [redacted].
type key struct{ b [keyLength]byte }

func (key) String() string   { return "[redacted]" }
func (key) GoString() string { return "[redacted]" }

// deriveKey stretches secret with Argon2id. The salt is derived from the
// cluster name, so every host of one cluster derives the same key without
// exchanging anything, and two clusters with the same secret do not.
func deriveKey(secret []byte, clusterName string) key {
	salt := sha256.Sum256([]byte("ssbuild cluster registration salt v1\x00" + clusterName))
	var k key
	copy(k.b[:], argon2.IDKey(secret, salt[:16], argonTime, argonMemory, argonThreads, keyLength))
	return k
}

// mac is HMAC-SHA256 over length-prefixed fields, so no two different field
// lists encode to the same bytes.
func (k key) mac(fields ...string) []byte {
	h := hmac.New(sha256.New, k.b[:])
	var n [4]byte
	for _, f := range fields {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	return h.Sum(nil)
}

// Hello is a joiner's first message: a fresh nonce and nothing derived
// from the secret, so an endpoint that is not the initiator learns nothing
// it could guess the secret from.
type Hello struct {
	Version int    `json:"version"`
	Cluster string `json:"cluster"`
	Nonce   string `json:"nonce"` // the joiner's: 32 random bytes, hex
}

// Challenge is the initiator's answer to a Hello: its own nonce and a MAC
// over both nonces and the fingerprint of the certificate its TLS endpoint
// serves. The joiner computes the MAC with the certificate it saw, so the
// proof is bound to that connection's peer and a relay cannot pass it on.
type Challenge struct {
	Version int    `json:"version"`
	Nonce   string `json:"nonce"` // the initiator's: 32 random bytes, hex
	MAC     string `json:"mac"`   // hex HMAC-SHA256
}

// JoinRequest is what a joiner sends once the initiator proved the secret.
// MAC proves the joiner holds the secret; it covers every other field and
// the initiator's certificate fingerprint.
type JoinRequest struct {
	Version        int    `json:"version"`
	Cluster        string `json:"cluster"`
	Name           string `json:"name"`           // the joiner's member name
	Address        string `json:"address"`        // the joiner's IP address
	Fingerprint    string `json:"fingerprint"`    // SHA-256 of the joiner's LXD server certificate, hex
	JoinerNonce    string `json:"joinerNonce"`    // from the joiner's Hello
	InitiatorNonce string `json:"initiatorNonce"` // from the initiator's Challenge: one use
	// Members is every host the joiner's recipe revision lists, as
	// name=address: a host added by a newer revision than the members'
	// own appliance.yaml is let in when that list names it and every
	// current member (see registrar.listedByJoiner).
	Members []string `json:"members,omitempty"`
	MAC     string   `json:"mac"` // hex HMAC-SHA256
}

// JoinResponse is the initiator's answer: a fresh LXD join token for the
// joiner and the initiator's own proof, bound to both nonces and the
// certificate the registration endpoint served.
//
// A host that is in no cluster answers with NoCluster set and no token,
// under a MAC of its own kind: the proof the initiator counts before it
// bootstraps (an unreachable or unproved host counts for nothing).
type JoinResponse struct {
	Token       string `json:"token"`
	NoCluster   bool   `json:"noCluster,omitempty"`
	Fingerprint string `json:"fingerprint"` // SHA-256 of the initiator's certificate, hex
	MAC         string `json:"mac"`
}

// Every MAC starts with its own label, so no proof of one kind is ever a
// valid proof of another (a challenge MAC the initiator hands anyone is
// never a join request's).
func challengeFields(cluster, joinerNonce, initiatorNonce, initiatorFP string) []string {
	return []string{"ssbuild join challenge v2", fmt.Sprint(ProtocolVersion), cluster, joinerNonce, initiatorNonce, initiatorFP}
}

func (r *JoinRequest) macFields(initiatorFP string) []string {
	f := []string{"ssbuild join request v2", fmt.Sprint(r.Version), r.Cluster, r.Name, r.Address,
		r.Fingerprint, r.JoinerNonce, r.InitiatorNonce, initiatorFP}
	if len(r.Members) > 0 {
		// Counted, so no member moves into another field.
		f = append(f, "members", fmt.Sprint(len(r.Members)))
		f = append(f, r.Members...)
	}
	return f
}

func responseFields(req *JoinRequest, resp *JoinResponse) []string {
	return []string{"ssbuild join response v2", req.Cluster, req.Name, req.JoinerNonce, req.InitiatorNonce, resp.Fingerprint, resp.Token}
}

func noClusterFields(req *JoinRequest, resp *JoinResponse) []string {
	return []string{"ssbuild join answer v2: in no cluster", req.Cluster, req.Name, req.JoinerNonce, req.InitiatorNonce, resp.Fingerprint}
}

func signNoCluster(k key, req *JoinRequest, resp *JoinResponse) {
	resp.MAC = hex.EncodeToString(k.mac(noClusterFields(req, resp)...))
}

// newNonce is 32 random bytes, hex.
func newNonce() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("nonce: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func newHello(cluster string) (*Hello, error) {
	n, err := newNonce()
	if err != nil {
		return nil, err
	}
	return &Hello{Version: ProtocolVersion, Cluster: cluster, Nonce: n}, nil
}

func signChallenge(k key, cluster, joinerNonce, initiatorFP string, c *Challenge) {
	c.MAC = hex.EncodeToString(k.mac(challengeFields(cluster, joinerNonce, c.Nonce, initiatorFP)...))
}

// newJoinRequest builds and signs a request answering challenge c, which
// came over a connection whose peer served initiatorFP.
func newJoinRequest(k key, cluster, name, address, fingerprint string, h *Hello, c *Challenge, initiatorFP string, members ...string) *JoinRequest {
	r := &JoinRequest{Version: ProtocolVersion, Cluster: cluster, Name: name, Address: address,
		Fingerprint: fingerprint, JoinerNonce: h.Nonce, InitiatorNonce: c.Nonce, Members: members}
	r.MAC = hex.EncodeToString(k.mac(r.macFields(initiatorFP)...))
	return r
}

// verifyMAC compares in constant time; a MAC that is not hex fails the same way.
func verifyMAC(k key, fields []string, macHex string) bool {
	got, err := hex.DecodeString(macHex)
	if err != nil {
		return false
	}
	return hmac.Equal(got, k.mac(fields...))
}

func signResponse(k key, req *JoinRequest, resp *JoinResponse) {
	resp.MAC = hex.EncodeToString(k.mac(responseFields(req, resp)...))
}

// Fingerprint is the SHA-256 of a certificate, as LXD writes it.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// refusal is why a request was refused. Its text goes to the joiner and the
// log, so it says which check failed and never anything about the secret.
type refusal struct {
	status int
	reason string // "busy: ..." when another join is under way there (busyHeader)
}

func (r *refusal) Error() string { return r.reason }

var (
	hex64  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// checkHello refuses a malformed hello.
func checkHello(h *Hello, cluster string) *refusal {
	switch {
	case h.Version != ProtocolVersion:
		return &refusal{400, fmt.Sprintf("protocol version %d, want %d", h.Version, ProtocolVersion)}
	case h.Cluster != cluster:
		return &refusal{400, "hello for another cluster"}
	case !hex64.MatchString(h.Nonce):
		return &refusal{400, "malformed nonce"}
	}
	return nil
}

// checkForm refuses a malformed request before any MAC is computed.
func checkForm(r *JoinRequest, cluster string) *refusal {
	switch {
	case r.Version != ProtocolVersion:
		return &refusal{400, fmt.Sprintf("protocol version %d, want %d", r.Version, ProtocolVersion)}
	case r.Cluster != cluster:
		return &refusal{400, "request for another cluster"}
	case !nameRe.MatchString(r.Name):
		return &refusal{400, "malformed member name"}
	case !hex64.MatchString(r.Fingerprint):
		return &refusal{400, "malformed certificate fingerprint"}
	case !hex64.MatchString(r.JoinerNonce) || !hex64.MatchString(r.InitiatorNonce):
		return &refusal{400, "malformed nonce"}
	case !hex64.MatchString(r.MAC):
		return &refusal{400, "malformed proof"}
	case len(r.Members) > maxMembers:
		return &refusal{400, "too many members"}
	}
	for _, m := range r.Members {
		if _, _, ok := parseMember(m); !ok {
			return &refusal{400, "malformed member list"}
		}
	}
	if _, err := netip.ParseAddr(r.Address); err != nil {
		return &refusal{400, "malformed address"}
	}
	return nil
}

// maxMembers bounds a joiner's member list (a request stays small).
const maxMembers = 32

// parseMember splits a members entry, name=address.
func parseMember(m string) (name string, addr netip.Addr, ok bool) {
	name, a, found := strings.Cut(m, "=")
	addr, err := netip.ParseAddr(a)
	return name, addr, found && err == nil && nameRe.MatchString(name)
}

// challenges holds the initiator's outstanding challenges: each answers
// one join request (valid or not) and is gone after it, or after
// challengeTTL, so a request is never accepted twice and the table stays
// within maxChallenges whatever is sent.
type challenges struct {
	mu      sync.Mutex
	pending map[string]*challenge // by initiator nonce
}

type challenge struct {
	joinerNonce string
	from        netip.Addr
	issued      time.Time
}

// issue records a new challenge for a hello from addr and returns its nonce.
func (c *challenges) issue(from netip.Addr, joinerNonce string, now time.Time) (string, error) {
	n, err := newNonce()
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		c.pending = map[string]*challenge{}
	}
	var oldest, oldestFrom string
	fromAddr := 0
	for k, ch := range c.pending {
		if now.Sub(ch.issued) >= challengeTTL {
			delete(c.pending, k)
			continue
		}
		if oldest == "" || ch.issued.Before(c.pending[oldest].issued) {
			oldest = k
		}
		if ch.from == from {
			fromAddr++
			if oldestFrom == "" || ch.issued.Before(c.pending[oldestFrom].issued) {
				oldestFrom = k
			}
		}
	}
	if fromAddr >= maxChallengesPerAddr {
		delete(c.pending, oldestFrom)
	} else if len(c.pending) >= maxChallenges {
		delete(c.pending, oldest)
	}
	c.pending[n] = &challenge{joinerNonce: joinerNonce, from: from, issued: now}
	return n, nil
}

// take removes the challenge a request names and says whether it was
// outstanding, unexpired, issued to this address for this joiner nonce.
func (c *challenges) take(initiatorNonce, joinerNonce string, from netip.Addr, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.pending[initiatorNonce]
	if !ok {
		return false
	}
	if ch.from != from {
		// Not this source's to spend: another address naming it must not
		// take it away from the joiner it was issued to.
		return false
	}
	delete(c.pending, initiatorNonce)
	return ch.joinerNonce == joinerNonce && now.Sub(ch.issued) < challengeTTL
}

func (c *challenges) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// failureLimiter counts refused requests (bad proofs, junk). It only ever
// acts on requests that fail: a request with a valid proof is checked
// before it and never refused because of other requests' failures, so junk
// sent from a joiner's address cannot lock that joiner out. Per address,
// from the limit on, its failures are answered 429 with a block time that
// doubles per further failure (up to an hour). Globally, more than
// globalLimit failures in a minute are answered 429 for the rest of that
// minute: many addresses (an IPv6 prefix, a botnet on the LAN) get around
// a per-address limit, and the global cap bounds what they cost the
// initiator and its log in total. Neither slows the guessing of a correct
// proof (that passes whatever the count); what protects the secret from
// guessing is that every guess costs an Argon2id derivation (online or
// offline against a challenge's MAC) and the secret's length.
type failureLimiter struct {
	mu          sync.Mutex
	limit       int
	block       time.Duration
	globalLimit int
	failures    map[netip.Addr]*failures

	window      time.Time // start of the current global minute
	windowCount int
	swept       time.Time // last sweep of forgotten addresses
}

// maxTrackedAddrs bounds the addresses the limiter remembers.
const maxTrackedAddrs = 4096

type failures struct {
	count int
	until time.Time // blocked until then
}

// blocked says how much longer addr's failing requests are answered 429;
// zero when not blocked.
func (l *failureLimiter) blocked(addr netip.Addr, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.blockedLocked(addr, now)
}

func (l *failureLimiter) blockedLocked(addr netip.Addr, now time.Time) time.Duration {
	var d time.Duration
	if f := l.failures[addr]; f != nil && now.Before(f.until) {
		d = f.until.Sub(now)
	}
	if l.globalLimit > 0 && l.windowCount > l.globalLimit && now.Sub(l.window) < time.Minute {
		d = max(d, l.window.Add(time.Minute).Sub(now))
	}
	return d
}

// fail records a refused request and returns how long its source is
// blocked now (zero if not): from the limit on, every further failure
// blocks the address for twice as long, up to an hour. started says this
// failure started the block, so one line in the log can say so.
func (l *failureLimiter) fail(addr netip.Addr, now time.Time) (blocked time.Duration, started bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	before := l.blockedLocked(addr, now)
	if l.failures == nil {
		l.failures = map[netip.Addr]*failures{}
	}
	// Forget addresses whose block ran out long ago, when room is needed
	// (at most once a minute: a sweep reads the whole map).
	if len(l.failures) >= maxTrackedAddrs && now.Sub(l.swept) >= time.Minute {
		l.swept = now
		for a, f := range l.failures {
			if now.Sub(f.until) > time.Hour && now.Sub(f.until) > l.block<<6 {
				delete(l.failures, a)
			}
		}
	}
	f := l.failures[addr]
	if f == nil && len(l.failures) >= maxTrackedAddrs {
		// Bounded memory: past this many failing addresses, new ones
		// are left to the global cap.
		f = &failures{}
	} else if f == nil {
		f = &failures{}
		l.failures[addr] = f
	}
	f.count++
	if over := f.count - l.limit; over >= 0 {
		d := l.block << min(over, 6)
		f.until = now.Add(min(d, time.Hour))
	} else if f.until.IsZero() {
		// Below the limit: may be forgotten an hour on, when room is needed.
		f.until = now
	}
	if now.Sub(l.window) >= time.Minute {
		l.window, l.windowCount = now, 0
	}
	l.windowCount++
	blocked = l.blockedLocked(addr, now)
	return blocked, before == 0 && blocked > 0
}

// errNoCluster is a proved answer: the host asked is in no cluster.
var errNoCluster = errors.New("in no cluster yet")

var errProofMismatch = errors.New("the initiator's proof does not verify: it does not hold this cluster's secret (wrong cluster secret or cluster name on one side) or it is not the initiator; nothing derived from the secret was sent to it")
