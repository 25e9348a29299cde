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
	// ProtocolVersion is the version of the registration messages.
	ProtocolVersion = 1
)

// Clock skew a request may have (both ways) before it is stale.
const maxSkew = 2 * time.Minute

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

// JoinRequest is what a joiner sends to the initiator's registration
// endpoint. MAC proves the joiner holds the secret; it covers every other
// field.
type JoinRequest struct {
	Version     int    `json:"version"`
	Cluster     string `json:"cluster"`
	Name        string `json:"name"`        // the joiner's member name
	Address     string `json:"address"`     // the joiner's IP address
	Fingerprint string `json:"fingerprint"` // SHA-256 of the joiner's LXD server certificate, hex
	Nonce       string `json:"nonce"`       // 32 random bytes, hex
	Timestamp   int64  `json:"timestamp"`   // Unix seconds
	MAC         string `json:"mac"`         // hex HMAC-SHA256
}

// JoinResponse is the initiator's answer: a fresh LXD join token for the
// joiner and the initiator's own proof, bound to the joiner's nonce and the
// certificate the registration endpoint served.
type JoinResponse struct {
	Token       string `json:"token"`
	Fingerprint string `json:"fingerprint"` // SHA-256 of the initiator's certificate, hex
	MAC         string `json:"mac"`
}

func (r *JoinRequest) macFields() []string {
	return []string{"ssbuild join request v1", fmt.Sprint(r.Version), r.Cluster, r.Name, r.Address,
		r.Fingerprint, r.Nonce, fmt.Sprint(r.Timestamp)}
}

func responseFields(req *JoinRequest, resp *JoinResponse) []string {
	return []string{"ssbuild join response v1", req.Cluster, req.Name, req.Nonce, resp.Fingerprint, resp.Token}
}

// newJoinRequest builds and signs a request.
func newJoinRequest(k key, cluster, name, address, fingerprint string, now time.Time) (*JoinRequest, error) {
	var nonce [32]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("join request nonce: %w", err)
	}
	r := &JoinRequest{Version: ProtocolVersion, Cluster: cluster, Name: name, Address: address,
		Fingerprint: fingerprint, Nonce: hex.EncodeToString(nonce[:]), Timestamp: now.Unix()}
	r.MAC = hex.EncodeToString(k.mac(r.macFields()...))
	return r, nil
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
	reason string
}

func (r *refusal) Error() string { return r.reason }

var (
	hex64  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

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
	case !hex64.MatchString(r.Nonce):
		return &refusal{400, "malformed nonce"}
	case !hex64.MatchString(r.MAC):
		return &refusal{400, "malformed proof"}
	}
	if _, err := netip.ParseAddr(r.Address); err != nil {
		return &refusal{400, "malformed address"}
	}
	return nil
}

// nonceCache remembers the nonces of accepted requests until they would be
// stale anyway, so a replayed request is refused and the cache stays bounded
// by what the rate of valid requests allows.
type nonceCache struct {
	mu   sync.Mutex
	seen map[string]time.Time // nonce -> when it can be forgotten
}

// maxNonces caps the cache; valid requests need the secret, so only a
// member gone haywire could fill it.
const maxNonces = 10000

// add records a nonce; false means it was seen before (a replay) or the
// cache is full.
func (c *nonceCache) add(nonce string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]time.Time{}
	}
	for n, until := range c.seen {
		if now.After(until) {
			delete(c.seen, n)
		}
	}
	if _, ok := c.seen[nonce]; ok || len(c.seen) >= maxNonces {
		return false
	}
	// A request is accepted up to maxSkew after its timestamp, and its
	// timestamp may be maxSkew ahead: keep it for both.
	c.seen[nonce] = now.Add(2*maxSkew + time.Second)
	return true
}

// failureLimiter blocks a source address after repeated refused requests:
// online guessing of the secret then costs minutes per few guesses.
type failureLimiter struct {
	mu       sync.Mutex
	limit    int
	block    time.Duration
	failures map[netip.Addr]*failures
}

type failures struct {
	count int
	until time.Time // blocked until then
}

// blocked says how much longer addr may not try; zero when it may.
func (l *failureLimiter) blocked(addr netip.Addr, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.failures[addr]; f != nil && now.Before(f.until) {
		return f.until.Sub(now)
	}
	return 0
}

// fail records a refused request; from the limit on, every further failure
// blocks the address for twice as long, up to an hour.
func (l *failureLimiter) fail(addr netip.Addr, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failures == nil {
		l.failures = map[netip.Addr]*failures{}
	}
	f := l.failures[addr]
	if f == nil {
		f = &failures{}
		l.failures[addr] = f
	}
	f.count++
	if over := f.count - l.limit; over >= 0 {
		d := l.block << min(over, 6)
		f.until = now.Add(min(d, time.Hour))
	}
}

// succeed forgets an address's failures: it has proved it holds the secret.
func (l *failureLimiter) succeed(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.failures, addr)
}

var errProofMismatch = errors.New("the initiator's proof does not verify: it does not hold the cluster secret, or the answer was tampered with")
