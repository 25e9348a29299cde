package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// These drive the real registrar handler and the real joiner client over
// TLS on loopback, without daemons (also under -short). The initiator
// listens on 127.0.0.1; joiners connect from their own loopback addresses
// (127.0.0.2, ...), so "the joiner's address" is a real source address.
// Behind the registrar, LXD is replaced by tokenLXD: it hands out join
// tokens and lists members, which is all the registration asks of it.

const loopSecret = "the loopback cluster secret, long enough"

// loop is an initiator serving registrations on loopback.
type loop struct {
	t    *testing.T
	cfg  config.Cluster
	init *Service
	reg  *registrar
	srv  *httptest.Server
	lxd  *tokenLXD
	out  *syncBuffer

	mu    sync.Mutex
	seen  []seenRequest // every request the endpoint got
	inner http.Handler
}

type seenRequest struct {
	path string
	body []byte
	from string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeCert makes a self-signed certificate and key in dir, where LXD
// keeps its own (server.crt, server.key).
func writeCert(t testing.TB, dir, cn string) tls.Certificate {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	key := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, "server.crt"), crt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// newLoop starts an initiator for cluster "demo" with members host1
// (127.0.0.1, the initiator), host2 (127.0.0.2) and host3 (127.0.0.3).
func newLoop(t *testing.T) *loop {
	t.Helper()
	l := &loop{t: t, lxd: &tokenLXD{clustered: true}, out: &syncBuffer{}}
	l.cfg = config.Cluster{Name: "demo", Initiator: "host1", InitiatorAddress: "127.0.0.1",
		Members: []config.Member{{Name: "host1", Address: "127.0.0.1"}, {Name: "host2", Address: "127.0.0.2"}, {Name: "host3", Address: "127.0.0.3"}}}
	dir := t.TempDir()
	cert := writeCert(t, dir, "host1")
	init, err := New(Options{Host: Host{
		Config: &config.Appliance{Host: config.Host{Name: "host1", Address: "127.0.0.1"}, Cluster: l.cfg, StateDir: t.TempDir()},
		Secret: []byte(loopSecret), LXD: l.lxd, LXDDir: dir, Progress: progress.New(l.out, progress.Plain),
	}})
	if err != nil {
		t.Fatal(err)
	}
	l.init = init
	l.reg = newRegistrar(init, func(error) {})
	l.inner = l.reg
	l.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		l.mu.Lock()
		l.seen = append(l.seen, seenRequest{path: r.URL.Path, body: body, from: r.RemoteAddr})
		l.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		l.inner.ServeHTTP(w, r)
	}))
	l.srv.TLS = registrationTLS(cert)
	l.srv.Config.ErrorLog = quietLog()
	l.srv.StartTLS()
	t.Cleanup(l.srv.Close)
	return l
}

func (l *loop) addr() string { return l.srv.Listener.Addr().String() }

func (l *loop) requests() []seenRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

// dialFrom connects from a given loopback address.
func dialFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return d.DialContext
}

// joiner is the service of member name (host2 or host3), with the loop's
// secret unless mod changes it.
func (l *loop) joiner(name string, mod func(*Options)) *Service {
	l.t.Helper()
	m, _ := l.cfg.Member(name)
	dir := l.t.TempDir()
	writeCert(l.t, dir, name)
	c := l.cfg
	c.RegistrationPort = l.srv.Listener.Addr().(*net.TCPAddr).Port
	o := Options{Host: Host{
		Config: &config.Appliance{Host: config.Host{Name: name, Address: m.Address}, Cluster: c, StateDir: l.t.TempDir()},
		Secret: []byte(loopSecret), LXD: &tokenLXD{}, LXDDir: dir, Progress: progress.New(l.out, progress.Plain),
	}, Dial: dialFrom(m.Address), BackoffInitial: 100 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o)
	if err != nil {
		l.t.Fatal(err)
	}
	return s
}

// post sends a raw request from ip with cert as client certificate.
func post(t testing.TB, addr, ip string, cert tls.Certificate, path string, body []byte) (int, http.Header, string) {
	t.Helper()
	status, header, data, err := tryPost(addr, ip, cert, path, body)
	if err != nil {
		t.Fatalf("post from %s: %v", ip, err)
	}
	return status, header, data
}

func tryPost(addr, ip string, cert tls.Certificate, path string, body []byte) (int, http.Header, string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:       dialFrom(ip),
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}},
		DisableKeepAlives: true,
	}}
	resp, err := client.Post("https://"+addr+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, strings.TrimSpace(string(data)), nil
}

// TestJoinImpostorGetsOnlyTheNonce: an endpoint at the initiator's address
// without the secret answers the hello with a made-up challenge. The
// joiner sends it nothing but its hello (a fresh nonce, the cluster name
// and the version) and stops the attempt with an error that names the
// secret and the cluster. The same holds against the real initiator for a
// joiner with the wrong secret: the initiator only ever sees its hello.
func TestJoinImpostorGetsOnlyTheNonce(t *testing.T) {
	l := newLoop(t)
	var mu sync.Mutex
	var got []seenRequest
	impostorKey := deriveKey([]byte("the impostor's guess at the secret"), "demo")
	impostorCert := writeCert(t, t.TempDir(), "impostor")
	impostorFP := Fingerprint(mustLeaf(t, impostorCert))
	impostor := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seenRequest{path: r.URL.Path, body: body})
		mu.Unlock()
		var h Hello
		_ = json.Unmarshal(body, &h)
		n, _ := newNonce()
		c := &Challenge{Version: ProtocolVersion, Nonce: n}
		signChallenge(impostorKey, "demo", h.Nonce, impostorFP, c)
		_ = json.NewEncoder(w).Encode(c)
	}))
	impostor.TLS = registrationTLS(impostorCert)
	impostor.StartTLS()
	defer impostor.Close()

	j := l.joiner("host2", nil)
	_, err := j.register(context.Background(), impostor.Listener.Addr().String())
	if !errors.Is(err, errProofMismatch) || !strings.Contains(err.Error(), "wrong cluster secret or cluster name") {
		t.Fatalf("joiner against an impostor: %v", err)
	}
	seen := func() []seenRequest {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	onlyHello := func(what string, reqs []seenRequest) {
		t.Helper()
		if len(reqs) != 1 || reqs[0].path != ChallengePath {
			t.Fatalf("%s got %d requests, want just the hello: %+v", what, len(reqs), reqs)
		}
		var fields map[string]any
		if err := json.Unmarshal(reqs[0].body, &fields); err != nil {
			t.Fatal(err)
		}
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, []string{"cluster", "nonce", "version"}) {
			t.Fatalf("%s got fields %v, want only cluster, nonce, version", what, keys)
		}
		n, _ := fields["nonce"].(string)
		if _, err := hex.DecodeString(n); err != nil || len(n) != 64 {
			t.Fatalf("%s got nonce %q", what, n)
		}
		// Nothing keyed: the hello is the same whatever the secret.
		for _, k := range []key{j.key, impostorKey} {
			for _, enc := range []string{hex.EncodeToString(k.b[:]), base64.StdEncoding.EncodeToString(k.b[:])} {
				if strings.Contains(string(reqs[0].body), enc) {
					t.Fatalf("%s got key material", what)
				}
			}
		}
	}
	onlyHello("the impostor", seen())

	// A second hello is a new nonce: nothing is reused across attempts.
	_, _ = j.register(context.Background(), impostor.Listener.Addr().String())
	if got := seen(); len(got) != 2 || bytes.Equal(got[0].body, got[1].body) {
		t.Fatalf("second attempt: %d requests, same hello %v", len(got), len(got) == 2 && bytes.Equal(got[0].body, got[1].body))
	}

	wrong := l.joiner("host3", func(o *Options) { o.Secret = []byte("not the loopback cluster secret!") })
	if _, err := wrong.register(context.Background(), l.addr()); !errors.Is(err, errProofMismatch) {
		t.Fatalf("joiner with a wrong secret against the initiator: %v", err)
	}
	onlyHello("the initiator", l.requests())
	if l.lxd.issued() != 0 {
		t.Fatal("a token was issued")
	}
}

// TestJoinNotLockedOutByJunkFromItsAddress: many more refused requests
// than the limit, sent from the joiner's own address (malformed bodies,
// wrong proofs, unused hellos, replays), block that address's failing
// requests, but the real joiner from that address still gets its token,
// also while junk keeps coming.
func TestJoinNotLockedOutByJunkFromItsAddress(t *testing.T) {
	l := newLoop(t)
	j := l.joiner("host2", nil)
	junkCert := writeCert(t, t.TempDir(), "junk")
	wrongKey := deriveKey([]byte("a guess at the cluster secret"), "demo")
	junkFP := Fingerprint(mustLeaf(t, junkCert))
	// junk is a wrong guess at the proof, on a challenge of its own; it
	// runs in a goroutine too, so it reports instead of failing.
	junk := func() (int, http.Header, string, error) {
		h, _ := newHello("demo")
		hb, _ := json.Marshal(h)
		status, _, body, err := tryPost(l.addr(), "127.0.0.2", junkCert, ChallengePath, hb)
		if err != nil || status != 200 {
			return status, nil, body, fmt.Errorf("hello from the joiner's address: %d %s %v", status, body, err)
		}
		var c Challenge
		if err := json.Unmarshal([]byte(body), &c); err != nil {
			return 0, nil, "", err
		}
		rb, _ := json.Marshal(newJoinRequest(wrongKey, "demo", "host2", "127.0.0.2", junkFP, h, &c, l.init.fp))
		return tryPost(l.addr(), "127.0.0.2", junkCert, RegistrationPath, rb)
	}
	limit := l.init.o.MaxFailures
	var last int
	var header http.Header
	for i := 0; i < 4*limit; i++ {
		switch i % 3 {
		case 0:
			var err error
			if last, header, _, err = junk(); err != nil {
				t.Fatal(err)
			}
		case 1:
			last, header, _ = post(t, l.addr(), "127.0.0.2", junkCert, RegistrationPath, []byte(`{"version":2,"name":`))
		case 2:
			h, _ := newHello("demo")
			post(t, l.addr(), "127.0.0.2", junkCert, ChallengePath, mustJSON(t, h))
			last, header, _ = post(t, l.addr(), "127.0.0.2", junkCert, RegistrationPath, mustJSON(t, &JoinRequest{
				Version: ProtocolVersion, Cluster: "demo", Name: "host2", Address: "127.0.0.2",
				Fingerprint: j.fp, JoinerNonce: h.Nonce, InitiatorNonce: strings.Repeat("00", 32), MAC: strings.Repeat("00", 32)}))
		}
	}
	if last != http.StatusTooManyRequests || header.Get("Retry-After") == "" {
		t.Fatalf("after %d refused requests from one address the next got %d, want 429 with Retry-After: the limiter is off", 4*limit, last)
	}

	// Junk goes on while the joiner registers.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if status, _, body, err := junk(); err != nil || status != http.StatusTooManyRequests {
				done <- fmt.Errorf("junk request %d while the joiner registers: %d %q %v", n, status, body, err)
				return
			}
		}
	}()
	tok, err := j.register(context.Background(), l.addr())
	close(stop)
	if jerr := <-done; jerr != nil {
		t.Error(jerr)
	}
	if err != nil {
		t.Fatalf("the joiner, after junk from its address: %v", err)
	}
	if !l.lxd.hasToken(tok, "host2") {
		t.Fatalf("the joiner got a token LXD did not issue for it: %q", tok)
	}
	if l.reg.limiter.blocked(netip.MustParseAddr("127.0.0.2"), time.Now()) == 0 {
		t.Fatal("the joiner's success unblocked the junk's address")
	}
}

// TestJoinWithClockTenMinutesOff: no message carries a time; freshness is
// the initiator's one-time nonce, so a joiner whose clock is far off joins.
func TestJoinWithClockTenMinutesOff(t *testing.T) {
	for _, off := range []time.Duration{10 * time.Minute, -10 * time.Minute} {
		l := newLoop(t)
		j := l.joiner("host2", func(o *Options) {
			o.now = func() time.Time { return time.Now().Add(off) }
		})
		if _, err := j.register(context.Background(), l.addr()); err != nil {
			t.Fatalf("joiner with its clock %s off: %v", off, err)
		}
		if l.lxd.issued() != 1 {
			t.Fatalf("joiner with its clock %s off: %d tokens issued", off, l.lxd.issued())
		}
	}
}

// TestJoinRetryAfterCapped: a refusal's Retry-After is not authenticated;
// the joiner waits at most maxRetryAfter, whatever it says.
func TestJoinRetryAfterCapped(t *testing.T) {
	for _, path := range []string{ChallengePath, RegistrationPath} {
		l := newLoop(t)
		// The real initiator for the hello, then a refusal in its place
		// for the step under test.
		l.inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == path {
				w.Header().Set("Retry-After", "3600")
				http.Error(w, "busy, come back in an hour", http.StatusServiceUnavailable)
				return
			}
			l.reg.ServeHTTP(w, r)
		})
		j := l.joiner("host2", nil)
		_, err := j.register(context.Background(), l.addr())
		var ra *retryAfterError
		if !errors.As(err, &ra) || ra.after != maxRetryAfter || maxRetryAfter > 10*time.Second {
			t.Fatalf("%s: Retry-After 3600 gave %v (%#v), want a wait of at most 10s", path, err, ra)
		}
	}

	// And the service's retry loop waits that long, not an hour.
	l := newLoop(t)
	l.inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		http.Error(w, "blocked", http.StatusTooManyRequests)
	})
	j := l.joiner("host2", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan error, 1)
	go func() { ended <- j.runJoiner(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(l.out.String(), "next attempt in") {
		if time.Now().After(deadline) {
			t.Fatalf("no retry line: %s", l.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-ended
	if out := l.out.String(); !strings.Contains(out, "next attempt in 10s") {
		t.Fatalf("the joiner does not cap the wait: %s", out)
	}
}

// TestJoinReplayRefused: the joiner's own join request, sent again over a
// connection with its certificate from its address, is refused and issues
// no second token; so is one naming a challenge the initiator never made.
func TestJoinReplayRefused(t *testing.T) {
	l := newLoop(t)
	j := l.joiner("host2", nil)
	cert := j.cert // what the joiner presents; a replay over it is the worst case
	if _, err := j.register(context.Background(), l.addr()); err != nil {
		t.Fatal(err)
	}
	var joinBody []byte
	for _, r := range l.requests() {
		if r.path == RegistrationPath {
			joinBody = r.body
		}
	}
	if joinBody == nil {
		t.Fatal("no join request seen")
	}
	status, _, body := post(t, l.addr(), "127.0.0.2", cert, RegistrationPath, joinBody)
	if status != http.StatusUnauthorized || !strings.Contains(body, "replayed") {
		t.Fatalf("replayed request: %d %q", status, body)
	}
	if l.lxd.issued() != 1 {
		t.Fatalf("%d tokens issued, want the one", l.lxd.issued())
	}

	// A correctly signed request for a challenge that was never issued.
	h, _ := newHello("demo")
	n, _ := newNonce()
	forged := newJoinRequest(j.key, "demo", "host2", "127.0.0.2", j.fp, h, &Challenge{Nonce: n}, l.init.fp)
	status, _, body = post(t, l.addr(), "127.0.0.2", cert, RegistrationPath, mustJSON(t, forged))
	if status != http.StatusUnauthorized || !strings.Contains(body, "replayed or expired") {
		t.Fatalf("request without a challenge: %d %q", status, body)
	}
	if l.lxd.issued() != 1 {
		t.Fatalf("%d tokens issued, want the one", l.lxd.issued())
	}
	// The refusals are in the initiator's log; nothing of the secret is.
	out := l.out.String()
	if !strings.Contains(out, "replayed") {
		t.Errorf("no refusal line: %s", out)
	}
	if strings.Contains(out, loopSecret) || strings.Contains(out, hex.EncodeToString(l.init.key.b[:])) {
		t.Error("the log shows the secret or the key")
	}
}

func mustLeaf(t testing.TB, c tls.Certificate) *x509.Certificate {
	t.Helper()
	if c.Leaf != nil {
		return c.Leaf
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// tokenLXD is the part of LXD's API the registrar uses: members and join
// tokens. Everything else panics (nil embedded interface).
type tokenLXD struct {
	lxd.InstanceServer
	clustered bool // the initiator's is; a joiner's is not yet
	mu        sync.Mutex
	tokens    map[string]api.Operation // by operation ID
	n         int
}

func (f *tokenLXD) GetCluster() (*api.Cluster, string, error) {
	return &api.Cluster{Enabled: f.clustered}, "", nil
}

func (f *tokenLXD) GetClusterMembers() ([]api.ClusterMember, error) {
	return []api.ClusterMember{{ServerName: "host1", Status: "Online"}}, nil
}

func (f *tokenLXD) GetOperations() ([]api.Operation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ops []api.Operation
	for _, op := range f.tokens {
		ops = append(ops, op)
	}
	return ops, nil
}

func (f *tokenLXD) DeleteOperation(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.tokens, id)
	return nil
}

func (f *tokenLXD) CreateClusterMember(m api.ClusterMembersPost) (lxd.Operation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	secret, _ := newNonce()
	op := api.Operation{ID: secret[:16], Class: api.OperationClassToken, StatusCode: api.Running,
		Metadata: map[string]any{"serverName": m.ServerName, "secret": secret, "fingerprint": strings.Repeat("ab", 32),
			"addresses": []any{"127.0.0.1:8443"}, "expiresAt": time.Now().Add(time.Hour).Format(time.RFC3339Nano)}}
	if f.tokens == nil {
		f.tokens = map[string]api.Operation{}
	}
	f.tokens[op.ID] = op
	return tokenOp{op: op}, nil
}

func (f *tokenLXD) issued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// hasToken says whether tok is a pending token for name.
func (f *tokenLXD) hasToken(tok, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, op := range f.tokens {
		t, err := op.ToClusterJoinToken()
		if err == nil && t.ServerName == name && t.String() == tok {
			return true
		}
	}
	return false
}

type tokenOp struct {
	lxd.Operation
	op api.Operation
}

func (o tokenOp) Get() api.Operation { return o.op }

// TestJoinNoClusterAnswerIsProved: a host in no cluster answers a valid
// request with a proved "no cluster" and issues nothing; the same answer
// made without the secret is refused as a bad proof, so it never counts
// towards a bootstrap.
func TestJoinNoClusterAnswerIsProved(t *testing.T) {
	l := newLoop(t)
	l.lxd.clustered = false
	j := l.joiner("host2", nil)
	if _, err := j.register(context.Background(), l.addr()); !errors.Is(err, errNoCluster) {
		t.Fatalf("asking a host in no cluster: %v, want %v", err, errNoCluster)
	}
	if l.lxd.issued() != 0 {
		t.Fatal("a host in no cluster issued a token")
	}
	// A forger that relays the real challenge but makes up the answer.
	l.inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == ChallengePath {
			l.reg.ServeHTTP(w, r)
			return
		}
		resp := &JoinResponse{NoCluster: true, Fingerprint: l.init.fp, MAC: strings.Repeat("00", 32)}
		_ = json.NewEncoder(w).Encode(resp)
	})
	if _, err := j.register(context.Background(), l.addr()); !errors.Is(err, errProofMismatch) {
		t.Fatalf("a made-up no-cluster answer: %v, want %v", err, errProofMismatch)
	}
}

// TestMayBootstrap: the initiator needs a majority of the listed hosts,
// itself included, proved in no cluster.
func TestMayBootstrap(t *testing.T) {
	for _, c := range []struct {
		listed, noCluster int
		want              bool
	}{
		{1, 0, true}, {2, 0, false}, {2, 1, true}, {3, 0, false}, {3, 1, true},
		{4, 1, false}, {4, 2, true}, {5, 1, false}, {5, 2, true},
	} {
		if got := mayBootstrap(c.listed, c.noCluster); got != c.want {
			t.Errorf("mayBootstrap(%d listed, %d in no cluster) = %v, want %v", c.listed, c.noCluster, got, c.want)
		}
	}
}
