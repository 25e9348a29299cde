package cluster

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// These run without daemons (also under -short): the proofs themselves.

var (
	testKey  = deriveKey([]byte("a cluster secret of some length"), "demo")
	otherKey = deriveKey([]byte("a cluster secret of some length"), "other")
)

func TestKeyDependsOnSecretAndCluster(t *testing.T) {
	again := deriveKey([]byte("a cluster secret of some length"), "demo")
	if again != testKey {
		t.Fatal("the same secret and cluster name give different keys: hosts could never agree")
	}
	if otherKey == testKey {
		t.Fatal("two clusters with one secret share a key: the salt does not depend on the name")
	}
	if deriveKey([]byte("a cluster secret of some lengtH"), "demo") == testKey {
		t.Fatal("a different secret gives the same key")
	}
	for _, s := range []string{fmt.Sprint(testKey), fmt.Sprintf("%v %+v %#v %s", testKey, testKey, testKey, testKey)} {
		if strings.Contains(s, hex.EncodeToString(testKey.b[:])) || !strings.Contains(s, "redacted") {
			t.Fatalf("printing the key shows %q", s)
		}
	}
}

// signed is a request as a joiner makes it after a verified challenge.
func signed(t *testing.T, k key, initFP string) (*JoinRequest, *Hello, *Challenge) {
	t.Helper()
	h, err := newHello("demo")
	if err != nil {
		t.Fatal(err)
	}
	n, err := newNonce()
	if err != nil {
		t.Fatal(err)
	}
	c := &Challenge{Version: ProtocolVersion, Nonce: n}
	signChallenge(k, "demo", h.Nonce, initFP, c)
	return newJoinRequest(k, "demo", "host2", "10.0.0.12", strings.Repeat("ab", 32), h, c, initFP), h, c
}

var initFP = strings.Repeat("cd", 32)

// TestProofCoversEveryField changes each field of a signed request in turn:
// every change must break the proof.
func TestProofCoversEveryField(t *testing.T) {
	r, _, _ := signed(t, testKey, initFP)
	if !verifyMAC(testKey, r.macFields(initFP), r.MAC) {
		t.Fatal("a fresh request does not verify")
	}
	if verifyMAC(otherKey, r.macFields(initFP), r.MAC) {
		t.Fatal("another cluster's key verifies the request")
	}
	if verifyMAC(testKey, r.macFields(strings.Repeat("ef", 32)), r.MAC) {
		t.Fatal("the request verifies for an initiator with another certificate")
	}
	v := reflect.ValueOf(r).Elem()
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Name
		if name == "MAC" {
			continue
		}
		changed := *r
		f := reflect.ValueOf(&changed).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Int, reflect.Int64:
			f.SetInt(f.Int() + 1)
		case reflect.Slice:
			f.Set(reflect.Append(f, reflect.ValueOf("host4=10.0.0.14")))
		}
		if verifyMAC(testKey, changed.macFields(initFP), r.MAC) {
			t.Errorf("changing %s keeps the proof valid", name)
		}
	}
	// Length prefixes: moving a byte from one field to the next changes it.
	moved := *r
	moved.Name, moved.Address = "host", "210.0.0.12"
	if verifyMAC(testKey, moved.macFields(initFP), r.MAC) {
		t.Error("shifting a byte across a field boundary keeps the proof valid")
	}
	if verifyMAC(testKey, r.macFields(initFP), "zz"+r.MAC[2:]) {
		t.Error("a proof that is not hex verifies")
	}
}

func TestChallengeProofBindsNoncesAndCertificate(t *testing.T) {
	_, h, c := signed(t, testKey, initFP)
	if !verifyMAC(testKey, challengeFields("demo", h.Nonce, c.Nonce, initFP), c.MAC) {
		t.Fatal("the initiator's challenge does not verify")
	}
	for what, fields := range map[string][]string{
		"another key":          nil,
		"another joiner nonce": challengeFields("demo", strings.Repeat("0", 64), c.Nonce, initFP),
		"another nonce":        challengeFields("demo", h.Nonce, strings.Repeat("0", 64), initFP),
		"another certificate":  challengeFields("demo", h.Nonce, c.Nonce, strings.Repeat("ef", 32)),
		"another cluster":      challengeFields("other", h.Nonce, c.Nonce, initFP),
	} {
		k := testKey
		if fields == nil {
			k, fields = otherKey, challengeFields("demo", h.Nonce, c.Nonce, initFP)
		}
		if verifyMAC(k, fields, c.MAC) {
			t.Errorf("the challenge verifies with %s", what)
		}
	}
	// Labels: a challenge's MAC is never a valid request or response MAC.
	r, _, _ := signed(t, testKey, initFP)
	if r.MAC == c.MAC || verifyMAC(testKey, r.macFields(initFP), c.MAC) {
		t.Error("a challenge MAC passes as a request's")
	}
}

func TestResponseProofBindsNonceAndCertificate(t *testing.T) {
	r, _, _ := signed(t, testKey, initFP)
	resp := &JoinResponse{Token: "tok", Fingerprint: initFP}
	signResponse(testKey, r, resp)
	if !verifyMAC(testKey, responseFields(r, resp), resp.MAC) {
		t.Fatal("the initiator's proof does not verify")
	}
	other, _, _ := signed(t, testKey, initFP)
	if verifyMAC(testKey, responseFields(other, resp), resp.MAC) {
		t.Error("an answer verifies for another request's nonces")
	}
	swapped := *resp
	swapped.Fingerprint = strings.Repeat("ef", 32)
	if verifyMAC(testKey, responseFields(r, &swapped), resp.MAC) {
		t.Error("an answer verifies with another certificate")
	}
	swapped = *resp
	swapped.Token = "tok2"
	if verifyMAC(testKey, responseFields(r, &swapped), resp.MAC) {
		t.Error("an answer verifies with another token")
	}
}

func TestChallengesOneUseExpiringBounded(t *testing.T) {
	var c challenges
	a, b := netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.13")
	jn := strings.Repeat("11", 32)
	now := time.Unix(1700000000, 0)
	n, err := c.issue(a, jn, now)
	if err != nil {
		t.Fatal(err)
	}
	if c.take(n, jn, b, now) {
		t.Fatal("another address spends the challenge")
	}
	if !c.take(n, jn, a, now.Add(time.Second)) {
		t.Fatal("first use refused")
	}
	if c.take(n, jn, a, now.Add(time.Second)) {
		t.Fatal("second use accepted: a replay")
	}
	n, _ = c.issue(a, jn, now)
	if c.take(n, strings.Repeat("22", 32), a, now) || c.take(n, jn, a, now) {
		t.Fatal("a challenge answers another joiner nonce, or survives a wrong one")
	}
	n, _ = c.issue(a, jn, now)
	if c.take(n, jn, a, now.Add(challengeTTL)) {
		t.Fatal("an expired challenge is accepted")
	}

	// Bounded: one address keeps its newest few; all addresses together
	// at most maxChallenges; the newest asker always gets a usable one.
	for i := 0; i < 100; i++ {
		c.issue(a, jn, now.Add(time.Duration(i)*time.Millisecond))
	}
	if c.len() != maxChallengesPerAddr {
		t.Fatalf("%d challenges outstanding for one address, want %d", c.len(), maxChallengesPerAddr)
	}
	for i := 0; i < 3*maxChallenges; i++ {
		from := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		c.issue(from, jn, now.Add(time.Second))
	}
	if c.len() > maxChallenges {
		t.Fatalf("%d challenges outstanding, bound is %d", c.len(), maxChallenges)
	}
	n, _ = c.issue(a, jn, now.Add(2*time.Second))
	if !c.take(n, jn, a, now.Add(2*time.Second)) {
		t.Fatal("the newest challenge is not usable")
	}
	// Expired ones go when the next is issued.
	c.issue(b, jn, now.Add(time.Hour))
	if c.len() != 1 {
		t.Fatalf("expired challenges kept: %d", c.len())
	}
}

func TestFailureLimiter(t *testing.T) {
	l := failureLimiter{limit: 3, block: time.Minute, globalLimit: 10}
	a, b := netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.13")
	now := time.Unix(1700000000, 0)
	for i := 0; i < 2; i++ {
		if d, _ := l.fail(a, now); d != 0 {
			t.Fatalf("blocked below the limit: %s", d)
		}
	}
	if d, started := l.fail(a, now); d != time.Minute || !started || l.blocked(b, now) > 0 {
		t.Fatal("the limit does not block exactly the failing address")
	}
	if d, started := l.fail(a, now); started || d != 2*time.Minute {
		t.Fatalf("a further failure blocks for %s (started %v), want twice as long, not a new start", d, started)
	}
	if l.blocked(a, now.Add(121*time.Second)) > 0 {
		t.Fatal("still blocked after the block time")
	}
	if d, started := l.fail(a, now.Add(121*time.Second)); d != 4*time.Minute || !started {
		t.Fatalf("a failure after the block blocks for %s (started %v), want 4m, a new start", d, started)
	}
	for i := 0; i < 20; i++ {
		l.fail(a, now.Add(122*time.Second))
	}
	if d := l.blocked(a, now.Add(122*time.Second)); d > time.Hour {
		t.Fatalf("blocked for %s, more than an hour", d)
	}

	// Global: past globalLimit failures in a minute, every address's
	// failures are answered 429 until the minute is over.
	g := failureLimiter{limit: 1000, block: time.Minute, globalLimit: 10}
	for i := 0; i < 10; i++ {
		if d, _ := g.fail(netip.AddrFrom4([4]byte{10, 2, 0, byte(i)}), now); d != 0 {
			t.Fatalf("blocked at failure %d of 10", i+1)
		}
	}
	if d, _ := g.fail(a, now.Add(10*time.Second)); d != 50*time.Second || g.blocked(b, now.Add(10*time.Second)) != 50*time.Second {
		t.Fatalf("the 11th failure in a minute blocks for %s", d)
	}
	if g.blocked(b, now.Add(time.Minute)) != 0 {
		t.Fatal("the global cap lasts past its minute")
	}

	// Memory stays bounded whatever the number of failing addresses.
	m := failureLimiter{limit: 5, block: time.Minute}
	for i := 0; i < 3*maxTrackedAddrs; i++ {
		m.fail(netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)}), now)
	}
	if len(m.failures) > maxTrackedAddrs {
		t.Fatalf("%d addresses remembered, bound is %d", len(m.failures), maxTrackedAddrs)
	}
	// Two hours on, the old ones make room for new ones.
	c := netip.MustParseAddr("10.4.0.1")
	m.fail(c, now.Add(2*time.Hour))
	if m.failures[c] == nil || len(m.failures) != 1 {
		t.Fatalf("old addresses not forgotten: %d remembered, new one kept %v", len(m.failures), m.failures[c] != nil)
	}
}

func TestCheckFormRefusesMalformed(t *testing.T) {
	good, h, _ := signed(t, testKey, initFP)
	if ref := checkForm(good, "demo"); ref != nil {
		t.Fatalf("good request refused: %v", ref)
	}
	for name, edit := range map[string]func(*JoinRequest){
		"version":         func(r *JoinRequest) { r.Version = 1 },
		"cluster":         func(r *JoinRequest) { r.Cluster = "other" },
		"name":            func(r *JoinRequest) { r.Name = "Host_2" },
		"address":         func(r *JoinRequest) { r.Address = "10.0.0.12:8443" },
		"fingerprint":     func(r *JoinRequest) { r.Fingerprint = "AB" },
		"joiner nonce":    func(r *JoinRequest) { r.JoinerNonce = "" },
		"initiator nonce": func(r *JoinRequest) { r.InitiatorNonce = "00" },
		"mac":             func(r *JoinRequest) { r.MAC = strings.Repeat("g", 64) },
	} {
		r := *good
		edit(&r)
		if ref := checkForm(&r, "demo"); ref == nil || ref.status != 400 {
			t.Errorf("%s: %v", name, ref)
		}
	}
	if ref := checkHello(h, "demo"); ref != nil {
		t.Fatalf("good hello refused: %v", ref)
	}
	for name, edit := range map[string]func(*Hello){
		"version": func(h *Hello) { h.Version = 1 },
		"cluster": func(h *Hello) { h.Cluster = "other" },
		"nonce":   func(h *Hello) { h.Nonce = strings.Repeat("A", 64) },
	} {
		bad := *h
		edit(&bad)
		if ref := checkHello(&bad, "demo"); ref == nil || ref.status != 400 {
			t.Errorf("hello %s: %v", name, ref)
		}
	}
}
