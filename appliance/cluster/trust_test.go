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

// TestProofCoversEveryField changes each field of a signed request in turn:
// every change must break the proof.
func TestProofCoversEveryField(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	r, err := newJoinRequest(testKey, "demo", "host2", "10.0.0.12", fp, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !verifyMAC(testKey, r.macFields(), r.MAC) {
		t.Fatal("a fresh request does not verify")
	}
	if verifyMAC(otherKey, r.macFields(), r.MAC) {
		t.Fatal("another cluster's key verifies the request")
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
		}
		if verifyMAC(testKey, changed.macFields(), r.MAC) {
			t.Errorf("changing %s keeps the proof valid", name)
		}
	}
	// Length prefixes: moving a byte from one field to the next changes it.
	moved := *r
	moved.Name, moved.Address = "host", "210.0.0.12"
	if verifyMAC(testKey, moved.macFields(), r.MAC) {
		t.Error("shifting a byte across a field boundary keeps the proof valid")
	}
	if verifyMAC(testKey, r.macFields(), "zz"+r.MAC[2:]) {
		t.Error("a proof that is not hex verifies")
	}
}

func TestResponseProofBindsNonceAndCertificate(t *testing.T) {
	r, _ := newJoinRequest(testKey, "demo", "host2", "10.0.0.12", strings.Repeat("ab", 32), time.Now())
	resp := &JoinResponse{Token: "tok", Fingerprint: strings.Repeat("cd", 32)}
	signResponse(testKey, r, resp)
	if !verifyMAC(testKey, responseFields(r, resp), resp.MAC) {
		t.Fatal("the initiator's proof does not verify")
	}
	other, _ := newJoinRequest(testKey, "demo", "host2", "10.0.0.12", strings.Repeat("ab", 32), time.Now())
	if verifyMAC(testKey, responseFields(other, resp), resp.MAC) {
		t.Error("an answer verifies for another request's nonce")
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

func TestNonceCache(t *testing.T) {
	var c nonceCache
	now := time.Unix(1700000000, 0)
	if !c.add("n1", now) {
		t.Fatal("first use refused")
	}
	if c.add("n1", now.Add(time.Minute)) {
		t.Fatal("replay within the window accepted")
	}
	// After the window the request is stale anyway; the entry may go.
	if !c.add("n2", now.Add(10*time.Minute)) || len(c.seen) != 1 {
		t.Fatalf("expired nonces are kept: %d entries", len(c.seen))
	}
}

func TestFailureLimiter(t *testing.T) {
	l := failureLimiter{limit: 3, block: time.Minute}
	a, b := netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.13")
	now := time.Unix(1700000000, 0)
	for i := 0; i < 2; i++ {
		l.fail(a, now)
	}
	if l.blocked(a, now) > 0 {
		t.Fatal("blocked below the limit")
	}
	l.fail(a, now)
	if l.blocked(a, now) != time.Minute || l.blocked(b, now) > 0 {
		t.Fatal("the limit does not block exactly the failing address")
	}
	if l.blocked(a, now.Add(61*time.Second)) > 0 {
		t.Fatal("still blocked after the block time")
	}
	l.fail(a, now.Add(61*time.Second))
	if l.blocked(a, now.Add(61*time.Second+90*time.Second)) == 0 {
		t.Fatal("a further failure does not block longer")
	}
	l.succeed(a)
	if l.blocked(a, now.Add(62*time.Second)) > 0 {
		t.Fatal("a valid request does not clear the address")
	}
}

func TestCheckFormRefusesMalformed(t *testing.T) {
	good, _ := newJoinRequest(testKey, "demo", "host2", "10.0.0.12", strings.Repeat("ab", 32), time.Now())
	if ref := checkForm(good, "demo"); ref != nil {
		t.Fatalf("good request refused: %v", ref)
	}
	for name, edit := range map[string]func(*JoinRequest){
		"version":     func(r *JoinRequest) { r.Version = 2 },
		"cluster":     func(r *JoinRequest) { r.Cluster = "other" },
		"name":        func(r *JoinRequest) { r.Name = "Host_2" },
		"address":     func(r *JoinRequest) { r.Address = "10.0.0.12:8443" },
		"fingerprint": func(r *JoinRequest) { r.Fingerprint = "AB" },
		"nonce":       func(r *JoinRequest) { r.Nonce = "" },
		"mac":         func(r *JoinRequest) { r.MAC = strings.Repeat("g", 64) },
	} {
		r := *good
		edit(&r)
		if ref := checkForm(&r, "demo"); ref == nil || ref.status != 400 {
			t.Errorf("%s: %v", name, ref)
		}
	}
}
