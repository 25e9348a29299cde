package cluster

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/config"
)

// TestFormation forms a three-member cluster on a bed: host2 starts before
// the initiator and keeps retrying; an impostor without the secret gets
// nothing but its hellos; while host3 has not started, requests with a
// wrong secret, tampered fields, a replay, no challenge, an unlisted name,
// a malformed and an oversized body are all refused and leave no member
// and no token; repeated failures get an address's failing requests 429
// but not a valid one; then host3, whose address has more failures than
// the limit, joins and every host sees the same three online members.
func TestFormation(t *testing.T) {
	e := newEnv(t, 3)
	h1, h2, h3 := e.bed.Hosts[0], e.bed.Hosts[1], e.bed.Hosts[2]

	// A joiner that starts first retries with a status line per attempt.
	early := e.start(1, nil)
	deadline := time.Now().Add(time.Minute)
	for strings.Count(e.output(), h2.Name+": attempt ") < 2 {
		if time.Now().After(deadline) || len(early.done) > 0 {
			t.Fatalf("host2 did not report two failed attempts while the initiator is down")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// An impostor on the initiator's address, without the secret, answers
	// with a made-up challenge: host2 must refuse it, send it no proof of
	// its own, and not join.
	impostor, joins := e.impostor(t, h1)
	for !strings.Contains(e.output(), "the initiator's proof does not verify") {
		if time.Now().After(deadline) || len(early.done) > 0 {
			t.Fatalf("host2 did not refuse the impostor's answer")
		}
		time.Sleep(100 * time.Millisecond)
	}
	impostor.Close()
	if n := joins(); n != 0 {
		t.Fatalf("host2 sent the impostor %d join requests after its made-up challenge", n)
	}
	if got := memberNames(t, h2); got != nil {
		t.Fatalf("host2 joined something after the impostor's answer: %v", got)
	}

	init := e.start(0, nil)
	e.waitStep(h1.Name, StepServing, 1, 2*time.Minute)
	if err := early.wait(t, 3*time.Minute); err != nil {
		t.Fatalf("host2, started before the initiator: %v", err)
	}
	if got := memberNames(t, h1); !slices.Equal(got, []string{"host1", "host2"}) {
		t.Fatalf("members after host2 joined: %v", got)
	}

	good := deriveKey(e.secret, e.cfgs[0].Cluster.Name)
	wrong := deriveKey([]byte("not-the-cluster-secret-at-all!!"), e.cfgs[0].Cluster.Name)
	nothingLeft := func(t *testing.T, tokens []string) {
		t.Helper()
		if got := memberNames(t, h1); !slices.Equal(got, []string{"host1", "host2"}) {
			t.Errorf("members: %v", got)
		}
		if got := pendingTokens(t, h1); !slices.Equal(got, tokens) {
			t.Errorf("pending tokens %v, want %v", got, tokens)
		}
	}
	flip := func(s string, i int) string {
		b := []byte(s)
		b[i] ^= 0x01
		return string(b)
	}
	t.Run("refused/wrong secret service", func(t *testing.T) {
		bad := e.start(2, func(o *Options) {
			o.Secret = []byte("not-the-cluster-secret-at-all!!")
			o.BackoffInitial = time.Minute // one attempt is enough
		})
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(e.output(), h3.Name+": attempt 1 ") {
			if time.Now().After(deadline) {
				t.Fatal("host3 with a wrong secret made no attempt")
			}
			time.Sleep(50 * time.Millisecond)
		}
		bad.stop()
		err := bad.wait(t, 30*time.Second)
		if err == nil || !strings.Contains(err.Error(), "proof does not verify") {
			t.Errorf("service with a wrong secret ended with %v", err)
		}
		st, serr := ReadStatus(e.cfgs[2].StateDir)
		if serr != nil || !strings.Contains(st.LastError, "proof does not verify") {
			t.Errorf("host3's status does not show the refusal: %+v %v", st, serr)
		}
		nothingLeft(t, nil)
	})

	refused := []struct {
		name   string
		from   int // host index the request comes from
		body   func(t *testing.T) []byte
		status int
		reason string
	}{
		{"wrong secret", 2, func(t *testing.T) []byte { return mustJSON(t, e.request(t, 2, h3, wrong, nil)) }, 401, "proof does not verify"},
		{"tampered name", 2, func(t *testing.T) []byte {
			r := e.request(t, 2, h3, good, nil)
			r.Name = flip(r.Name, len(r.Name)-1) // host3 -> host2
			return mustJSON(t, r)
		}, 401, "proof does not verify"},
		{"tampered fingerprint", 2, func(t *testing.T) []byte {
			r := e.request(t, 2, h3, good, nil)
			// Flip a bit of a hex digit 0-7, which stays a hex digit.
			i := strings.IndexAny(r.Fingerprint, "01234567")
			r.Fingerprint = flip(r.Fingerprint, i)
			return mustJSON(t, r)
		}, 401, "proof does not verify"},
		{"no challenge", 2, func(t *testing.T) []byte {
			return mustJSON(t, e.request(t, 2, h3, good, func(r *JoinRequest) { r.InitiatorNonce = strings.Repeat("00", 32) }))
		}, 401, "replayed or expired"},
		{"unlisted name", 1, func(t *testing.T) []byte {
			return mustJSON(t, e.request(t, 2, h2, good, func(r *JoinRequest) { r.Name = "host9" }))
		}, 403, "not a member"},
		{"malformed", 1, func(*testing.T) []byte { return []byte(`{"version":2,"name":`) }, 400, "malformed"},
		{"unknown field", 1, func(*testing.T) []byte { return []byte(`{"version":2,"extra":true}`) }, 400, "malformed"},
		{"oversized", 1, func(*testing.T) []byte {
			return []byte(`{"name":"` + strings.Repeat("a", 1<<20) + `"}`)
		}, 413, "larger than"},
	}
	for _, tc := range refused {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			status, body := e.post(t, e.bed.Hosts[tc.from], tc.body(t))
			if status != tc.status || !strings.Contains(body, tc.reason) {
				t.Errorf("got %d %q, want %d and %q", status, body, tc.status, tc.reason)
			}
			nothingLeft(t, nil)
		})
	}

	t.Run("refused/replay", func(t *testing.T) {
		body := mustJSON(t, e.request(t, 2, h3, good, nil))
		status, resp := e.post(t, h3, body)
		if status != 200 {
			t.Fatalf("valid request: %d %s", status, resp)
		}
		var jr JoinResponse
		if err := json.Unmarshal([]byte(resp), &jr); err != nil || jr.Token == "" {
			t.Fatalf("valid request: answer %q: %v", resp, err)
		}
		nothingLeft(t, []string{"host3"})
		status, resp = e.post(t, h3, body)
		if status != 401 && status != 429 || !strings.Contains(resp, "replayed") {
			t.Errorf("replay: got %d %q", status, resp)
		}
		// The replay issued nothing: still the one token from the original.
		nothingLeft(t, []string{"host3"})

		// A valid, fresh request over a connection whose certificate is
		// not the one it names is refused too.
		status, resp = e.postAs(t, h3, h2, RegistrationPath, mustJSON(t, e.request(t, 2, h3, good, nil)))
		if status != 401 || !strings.Contains(resp, "client certificate does not match") {
			t.Errorf("another certificate: got %d %q", status, resp)
		}
		nothingLeft(t, []string{"host3"})
	})

	t.Run("rate limit", func(t *testing.T) {
		// host2 is a member already, so blocking its address costs
		// nothing: more wrong guesses than the limit get 429...
		var status int
		var body string
		for i := 0; i < defaultMaxFailures+1; i++ {
			status, body = e.post(t, h2, mustJSON(t, e.request(t, 1, h2, wrong, nil)))
		}
		if status != 429 {
			t.Errorf("after %d failures a wrong proof got %d %q, want 429", defaultMaxFailures+1, status, body)
		}
		// ...but a valid proof from that address is judged on its own:
		// host2 is a member, not blocked.
		status, body = e.post(t, h2, mustJSON(t, e.request(t, 1, h2, good, nil)))
		if status != 409 || !strings.Contains(body, "already a member") {
			t.Errorf("a valid request from a blocked address got %d %q, want 409 already a member", status, body)
		}
		nothingLeft(t, []string{"host3"})
	})

	// host3's own service replaces the token the test made and joins,
	// though its address has more failures than the limit (above).
	last := e.start(2, nil)
	if err := last.wait(t, 3*time.Minute); err != nil {
		t.Fatalf("host3: %v", err)
	}
	if err := init.wait(t, time.Minute); err != nil {
		t.Fatalf("initiator: %v", err)
	}
	e.assertFormed(t)

	stopServing3 := func() {}
	t.Run("wiped initiator joins the existing cluster", func(t *testing.T) {
		began := time.Now()
		e.wipe(0)
		// host2 and host3 serve no registration yet (their services
		// returned): the wiped initiator hears from no one and must wait,
		// not bootstrap a second cluster.
		again := e.start(0, nil)
		deadline := time.Now().Add(time.Minute)
		for strings.Count(e.output(), "no bootstrap before 2 of 3 listed hosts") < 3 {
			if time.Now().After(deadline) || len(again.done) > 0 {
				t.Fatalf("the wiped initiator did not wait for the others")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got := memberNames(t, h1); got != nil {
			t.Fatalf("the wiped initiator is in a cluster of %v while the others were unreachable", got)
		}
		// The members serve registration as the appliance service does:
		// the initiator gets a token once LXD sees its old member offline.
		e.serve(1)
		stopServing3 = e.serve(2)
		if err := again.wait(t, 3*time.Minute); err != nil {
			t.Fatalf("the wiped initiator: %v", err)
		}
		t.Logf("figure: wiped initiator's start to its cluster formed: %s", time.Since(began).Round(time.Second))
		e.assertFormed(t)
		if n := strings.Count(e.output(), "host1: cluster-bootstrapped: bootstrapped"); n != 1 {
			t.Errorf("bootstrapped %d times, want once", n)
		}
		if !strings.Contains(e.output(), "removing the old member") || e.reachedCount(h1.Name, StepRegistered) != 1 {
			t.Errorf("host1 did not register as a replaced member")
		}
		if Bootstrapped(e.cfgs[0].StateDir) {
			t.Errorf("the re-joined initiator says it bootstrapped its cluster")
		}
	})
	t.Run("rotate secret", func(t *testing.T) {
		e.serve(0) // host1's Run returned: serve as its service would
		newSecret := []byte(hex.EncodeToString([]byte("a new secret for the bed cluster!")))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		began := time.Now()
		o := RotateOptions{Config: e.cfgs[1], Secret: e.secret, NewSecret: newSecret,
			LXD: h2.LXD(), LXDDir: h2.LXDDir, Dial: h2.DialContext}
		results, err := RotateSecret(ctx, o)
		if err != nil {
			t.Fatalf("rotate: %v (%+v)", err, results)
		}
		t.Logf("figure: secret rotated on %d members in %s", len(results), time.Since(began).Round(time.Millisecond))
		for i, c := range e.cfgs {
			if got, err := config.ReadSecret(c.SecretFile); err != nil || string(got) != string(newSecret) {
				t.Errorf("%s's secret file after the rotation: %v", e.bed.Hosts[i].Name, err)
			}
		}
		// A proof with the old secret fails; one with the new one passes
		// (host2 is a member already: the proof verified).
		status, body := e.post(t, h2, mustJSON(t, e.request(t, 1, h2, good, nil)))
		if status != 401 || !strings.Contains(body, "proof does not verify") {
			t.Errorf("old secret after the rotation: %d %q, want 401", status, body)
		}
		newKey := deriveKey(newSecret, e.cfgs[0].Cluster.Name)
		status, body = e.post(t, h2, mustJSON(t, e.request(t, 1, h2, newKey, nil)))
		if status != 409 || !strings.Contains(body, "already a member") {
			t.Errorf("new secret after the rotation: %d %q, want 409 already a member", status, body)
		}
		// A re-run finds every member holding it; the old secret rotates nothing.
		o.Secret = newSecret
		if _, err := RotateSecret(ctx, o); err != nil {
			t.Errorf("re-run: %v", err)
		}
		o.Secret, o.NewSecret = e.secret, []byte("yet another secret, from an old stick")
		if res, err := RotateSecret(ctx, o); err == nil {
			t.Errorf("rotation with the old secret: %+v", res)
		}
		// A re-installed host3 with an old stick is refused; with the new
		// secret (its secret file holds it since the rotation) it joins.
		stopServing3()
		e.wipe(2)
		before := strings.Count(e.output(), "host3: attempt 1 to join failed")
		old := e.start(2, func(o *Options) { o.Secret = e.secret; o.BackoffInitial = time.Minute })
		deadline := time.Now().Add(time.Minute)
		for strings.Count(e.output(), "host3: attempt 1 to join failed") == before {
			if time.Now().After(deadline) {
				t.Fatal("host3 with the old secret made no attempt")
			}
			time.Sleep(50 * time.Millisecond)
		}
		old.stop()
		if err := old.wait(t, 30*time.Second); err == nil || !strings.Contains(err.Error(), "proof does not verify") {
			t.Errorf("host3 with the old secret: %v", err)
		}
		if got := memberNames(t, h3); got != nil {
			t.Fatalf("host3 with the old secret is in a cluster of %v", got)
		}
		if err := e.start(2, nil).wait(t, 3*time.Minute); err != nil {
			t.Fatalf("host3 with the new secret: %v", err)
		}
		e.assertFormed(t)
		if strings.Contains(e.output(), string(newSecret)) {
			t.Error("the new secret appears in the services' output")
		}
	})
	e.assertNoLeak(t)
}
