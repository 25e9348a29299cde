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
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/configtest"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// env is a test bed with an appliance.yaml and a secret file per host, and
// the services' output and steps.
type env struct {
	t      testing.TB
	bed    *testbed.Bed
	cfgs   []*config.Appliance
	secret []byte
	quiet  bool // keep the services' lines out of the test log (benchmarks)

	mu    sync.Mutex
	log   bytes.Buffer
	steps map[string][]Step // host -> steps reached, in order
	errs  []string          // every error a service returned
}

func newEnv(t testing.TB, hosts int) *env {
	bed := testbed.New(t, testbed.Options{Hosts: hosts})
	return envOn(t, bed)
}

func envOn(t testing.TB, bed *testbed.Bed) *env {
	e := &env{t: t, bed: bed, steps: map[string][]Step{}}
	hosts, secret := configtest.ForBed(t, bed)
	e.secret = secret
	for _, h := range hosts {
		e.cfgs = append(e.cfgs, h.Config)
	}
	return e
}

// Write makes env the services' progress writer: kept for the leak check,
// and shown in the test log.
func (e *env) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.quiet {
		e.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	}
	return e.log.Write(p)
}

// service is one run of a host's service, in its own goroutine.
type service struct {
	host *testbed.Host
	cfg  *config.Appliance
	done chan error
	stop context.CancelFunc
}

// start runs host i's service, talking to its own LXD, listening and
// dialling inside its network namespace.
func (e *env) start(i int, mod func(*Options)) *service {
	e.t.Helper()
	h := e.bed.Hosts[i]
	secret, err := config.ReadSecret(e.cfgs[i].SecretFile)
	if err != nil {
		e.t.Fatal(err)
	}
	o := Options{
		Host: Host{Config: e.cfgs[i], Secret: secret, LXD: h.LXD(), LXDDir: h.LXDDir,
			Progress: progress.New(e, progress.Plain),
			OnStep: func(s Step) {
				e.mu.Lock()
				defer e.mu.Unlock()
				e.steps[h.Name] = append(e.steps[h.Name], s)
			}},
		Listen: h.Listen, Dial: h.DialContext,
		BackoffInitial: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
	}
	if mod != nil {
		mod(&o)
	}
	svc, err := New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	s := &service{host: h, cfg: e.cfgs[i], done: make(chan error, 1), stop: cancel}
	go func() {
		err := svc.Run(ctx)
		if err != nil {
			e.mu.Lock()
			e.errs = append(e.errs, err.Error())
			e.mu.Unlock()
			e.t.Logf("%s: service ended: %v", h.Name, err)
		}
		s.done <- err
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			e.t.Errorf("%s: service did not stop", h.Name)
		}
	})
	return s
}

// serve keeps host i's registration endpoint open (Service.Serve, as the
// appliance service does after formation) until the test ends or the
// returned stop is called.
func (e *env) serve(i int) (stop func()) {
	e.t.Helper()
	h := e.bed.Hosts[i]
	secret, err := config.ReadSecret(e.cfgs[i].SecretFile)
	if err != nil {
		e.t.Fatal(err)
	}
	svc, err := New(Options{Host: Host{Config: e.cfgs[i], Secret: secret, LXD: h.LXD(), LXDDir: h.LXDDir,
		Progress: progress.New(e, progress.Plain)}, Listen: h.Listen, Dial: h.DialContext})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("%s: serve: %v", h.Name, err)
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

// wipe re-installs host i: a power cut, its LXD directory, pool and state
// directory emptied, a fresh LXD started (same name, same address).
func (e *env) wipe(i int) {
	e.t.Helper()
	h := e.bed.Hosts[i]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := h.Wipe(ctx); err != nil {
		e.t.Fatal(err)
	}
	for _, dir := range []string{e.cfgs[i].Cluster.Storage.Source, e.cfgs[i].StateDir} {
		if err := os.RemoveAll(dir); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := os.Mkdir(e.cfgs[i].Cluster.Storage.Source, 0o711); err != nil {
		e.t.Fatal(err)
	}
}

// wait returns the service's result; it fails the test on timeout.
func (s *service) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // later waits and the cleanup see it too
		return err
	case <-time.After(timeout):
		t.Fatalf("%s: service still running after %s", s.host.Name, timeout)
		return nil
	}
}

func (e *env) reachedCount(host string, step Step) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, s := range e.steps[host] {
		if s == step {
			n++
		}
	}
	return n
}

func (e *env) waitStep(host string, step Step, count int, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for e.reachedCount(host, step) < count {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s did not reach %s (%d times) within %s", host, step, count, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) output() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.log.String()
}

// pendingTokens lists the join tokens LXD on h holds, by member name.
func pendingTokens(t testing.TB, h *testbed.Host) []string {
	t.Helper()
	ops, err := h.LXD().GetOperations()
	if err != nil {
		t.Fatalf("%s: list operations: %v", h.Name, err)
	}
	var names []string
	for _, op := range ops {
		// A used token's operation lingers as a success: not pending.
		if op.Class != "token" || op.StatusCode != api.Running {
			continue
		}
		tok, err := op.ToClusterJoinToken()
		if err != nil {
			t.Fatalf("%s: token operation %s: %v", h.Name, op.ID, err)
		}
		names = append(names, tok.ServerName)
	}
	slices.Sort(names)
	return names
}

func memberNames(t testing.TB, h *testbed.Host) []string {
	t.Helper()
	c, _, err := h.LXD().GetCluster()
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	if !c.Enabled {
		return nil
	}
	members, err := h.LXD().GetClusterMembers()
	if err != nil {
		t.Fatalf("%s: list members: %v", h.Name, err)
	}
	var names []string
	for _, m := range members {
		names = append(names, m.ServerName)
	}
	slices.Sort(names)
	return names
}

// assertFormed checks what a user would with `lxc cluster list` on every
// host: all the bed's hosts, online, holding database roles, the same
// cluster everywhere, and no join token left pending.
func (e *env) assertFormed(t testing.TB) {
	t.Helper()
	var want []string
	for _, h := range e.bed.Hosts {
		want = append(want, h.Name)
	}
	slices.Sort(want)
	// LXD hands out database roles shortly after a join: give it time.
	deadline := time.Now().Add(60 * time.Second)
	certs := map[string]bool{}
	for i, h := range e.bed.Hosts {
		// One cluster: every member serves the same cluster certificate.
		server, _, err := h.LXD().GetServer()
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		certs[server.Environment.Certificate] = true
		for {
			members, err := h.LXD().GetClusterMembers()
			if err != nil {
				t.Fatalf("%s: list members: %v", h.Name, err)
			}
			var names, problems []string
			for _, m := range members {
				names = append(names, m.ServerName)
				if m.Status != "Online" {
					problems = append(problems, m.ServerName+" is "+m.Status)
				}
				// With three members every one is a voter.
				if len(want) == 3 && !slices.Contains(m.Roles, "database") {
					problems = append(problems, fmt.Sprintf("%s has roles %v", m.ServerName, m.Roles))
				}
			}
			slices.Sort(names)
			if !slices.Equal(names, want) {
				problems = append(problems, fmt.Sprintf("members %v, want %v", names, want))
			}
			if len(problems) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s sees: %s", h.Name, strings.Join(problems, "; "))
			}
			time.Sleep(500 * time.Millisecond)
		}
		if toks := pendingTokens(t, h); len(toks) > 0 {
			t.Errorf("%s: join tokens left pending for %v", h.Name, toks)
		}
		e.assertMemberReady(t, i)
	}
	if len(certs) != 1 {
		t.Errorf("the hosts serve %d different cluster certificates, want 1", len(certs))
	}
}

// assertMemberReady: host i's member has the cluster's pool on its own
// source, the network and a profile using both, whether lxdinit made them
// (the initiator) or its join did (a joiner).
func (e *env) assertMemberReady(t testing.TB, i int) {
	t.Helper()
	h, c := e.bed.Hosts[i], e.cfgs[i].Cluster
	on := h.LXD().UseTarget(h.Name)
	pool, _, err := on.GetStoragePool(c.Storage.Pool)
	if err != nil || pool.Status != "Created" || pool.Config["source"] != c.Storage.Source {
		t.Errorf("%s: pool %s: %+v, %v; want created on %s", h.Name, c.Storage.Pool, pool, err, c.Storage.Source)
	}
	if len(c.Networks) > 0 {
		if n, _, err := on.GetNetwork(c.Networks[0].Name); err != nil || n.Status != "Created" {
			t.Errorf("%s: network %s: %+v, %v", h.Name, c.Networks[0].Name, n, err)
		}
	}
	p, _, err := h.LXD().GetProfile("default")
	if err != nil || p.Devices["root"]["pool"] != c.Storage.Pool {
		t.Errorf("%s: default profile: %+v, %v; want its root disk on %s", h.Name, p, err, c.Storage.Pool)
	}
}

// assertNoLeak greps everything the services printed and returned for the
// secret and the derived key.
func (e *env) assertNoLeak(t testing.TB) {
	t.Helper()
	k := deriveKey(e.secret, e.cfgs[0].Cluster.Name)
	e.mu.Lock()
	all := e.log.String() + strings.Join(e.errs, "\n")
	e.mu.Unlock()
	for what, s := range map[string]string{
		"secret":         string(e.secret),
		"key (hex)":      hex.EncodeToString(k.b[:]),
		"key (base64)":   base64.StdEncoding.EncodeToString(k.b[:]),
		"key (raw)":      string(k.b[:]),
		"secret (upper)": strings.ToUpper(string(e.secret)),
	} {
		if strings.Contains(all, s) {
			t.Errorf("the services' output contains the %s", what)
		}
	}
	if !strings.Contains(all, "registration") {
		t.Errorf("no registration lines in the output: the leak check looked at nothing")
	}
}

// post sends a raw registration request from inside h's network with h's
// LXD certificate as client certificate; it returns the status and body.
func (e *env) post(t testing.TB, from *testbed.Host, body []byte) (int, string) {
	t.Helper()
	return e.postAs(t, from, from, RegistrationPath, body)
}

// postAs sends to path from one host's network with another host's
// certificate.
func (e *env) postAs(t testing.TB, from, certOf *testbed.Host, path string, body []byte) (int, string) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(certOf.LXDDir, "server.crt"), filepath.Join(certOf.LXDDir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext:       from.DialContext,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}},
		DisableKeepAlives: true,
	}}
	resp, err := client.Post("https://"+e.cfgs[0].Cluster.RegistrationAddress()+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("post from %s: %v", from.Name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(data))
}

// request builds a request as host i would send it, signed with k, on a
// challenge the initiator gave host from (a hello from its network).
func (e *env) request(t testing.TB, i int, from *testbed.Host, k key, edit func(*JoinRequest)) *JoinRequest {
	t.Helper()
	certOf := func(h *testbed.Host) tls.Certificate {
		cert, err := tls.LoadX509KeyPair(filepath.Join(h.LXDDir, "server.crt"), filepath.Join(h.LXDDir, "server.key"))
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	h := e.bed.Hosts[i]
	hello, err := newHello(e.cfgs[0].Cluster.Name)
	if err != nil {
		t.Fatal(err)
	}
	status, body := e.postAs(t, from, from, ChallengePath, mustJSON(t, hello))
	var c Challenge
	if status != 200 || json.Unmarshal([]byte(body), &c) != nil {
		t.Fatalf("hello from %s: %d %s", from.Name, status, body)
	}
	initFP := Fingerprint(certOf(e.bed.Hosts[0]).Leaf)
	r := newJoinRequest(k, e.cfgs[0].Cluster.Name, h.Name, h.Address.String(), Fingerprint(certOf(h).Leaf), hello, &c, initFP)
	if edit != nil {
		edit(r)
		r.MAC = hex.EncodeToString(k.mac(r.macFields(initFP)...))
	}
	return r
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// impostor serves the registration endpoint on h's address without the
// secret, over TLS with a certificate of its own: it answers every hello
// with a challenge made with a key of its own, and every join request with
// a token. joins counts the join requests it got (there should be none).
func (e *env) impostor(t testing.TB, h *testbed.Host) (srv *http.Server, joins func() int) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "impostor"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	leaf, _ := x509.ParseCertificate(der)
	own := deriveKey([]byte("the impostor's guess at a secret"), e.cfgs[0].Cluster.Name)
	var mu sync.Mutex
	n := 0
	srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != ChallengePath {
				mu.Lock()
				n++
				mu.Unlock()
				_ = json.NewEncoder(w).Encode(&JoinResponse{Token: "eyJmYWtlIjp0cnVlfQ==", Fingerprint: Fingerprint(leaf)})
				return
			}
			var hello Hello
			if err := json.NewDecoder(r.Body).Decode(&hello); err != nil {
				http.Error(w, "bad", 400)
				return
			}
			nonce, _ := newNonce()
			c := &Challenge{Version: ProtocolVersion, Nonce: nonce}
			signChallenge(own, e.cfgs[0].Cluster.Name, hello.Nonce, Fingerprint(leaf), c)
			_ = json.NewEncoder(w).Encode(c)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert},
	}
	ln, err := h.Listen("tcp", e.cfgs[0].Cluster.RegistrationAddress())
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return srv, func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}
