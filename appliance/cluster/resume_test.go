package cluster

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// TestResumesAfterStopAtEveryStep stops the services right after each named
// step in turn (Options.FailAfter), starts them again, and checks that they
// converge to the one three-member cluster the first bootstrap made: no
// second cluster, no duplicate member, no token left pending.
func TestResumesAfterStopAtEveryStep(t *testing.T) {
	e := newEnv(t, 3)
	h1, h2, h3 := e.bed.Hosts[0], e.bed.Hosts[1], e.bed.Hosts[2]
	failAfter := func(step Step) func(*Options) {
		return func(o *Options) { o.FailAfter = step }
	}
	stopped := func(s *service, step Step) {
		t.Helper()
		err := s.wait(t, 3*time.Minute)
		if !errors.Is(err, ErrInjected) {
			t.Fatalf("%s: want a stop after %s, got %v", s.host.Name, step, err)
		}
		// What `ssbuild appliance status` will show on that host.
		st, err := ReadStatus(s.cfg.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		if want := step; step == StepTokenIssued {
			want = StepServing // token-issued is per joiner, not the host's step
			if st.Step != want {
				t.Errorf("%s: status step %q, want %q", s.host.Name, st.Step, want)
			}
		} else if st.Step != want {
			t.Errorf("%s: status step %q, want %q", s.host.Name, st.Step, want)
		}
		if !strings.Contains(st.LastError, "fault injection") {
			t.Errorf("%s: status last error %q", s.host.Name, st.LastError)
		}
	}
	expect := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}

	// Every host stops once LXD is initialised.
	for i := range e.bed.Hosts {
		stopped(e.start(i, failAfter(StepLXDInitialised)), StepLXDInitialised)
	}

	// The initiator bootstraps only once a majority of the listed hosts
	// proved they are in no cluster: host3's endpoint answers for it.
	stopWitness := e.serve(2)
	// The initiator stops right after bootstrapping, then right after it
	// starts serving: neither re-run bootstraps again.
	stopped(e.start(0, failAfter(StepBootstrapped)), StepBootstrapped)
	stopWitness()
	server, _, err := h1.LXD().GetServer()
	if err != nil {
		t.Fatal(err)
	}
	clusterCert := server.Environment.Certificate
	stopped(e.start(0, failAfter(StepServing)), StepServing)
	expect("members after two restarts of the initiator", memberNames(t, h1), []string{"host1"})

	// The initiator stops right after issuing host2's token, before it
	// answers: host2 keeps retrying, the token is orphaned.
	init := e.start(0, failAfter(StepTokenIssued))
	j2 := e.start(1, failAfter(StepRegistered))
	stopped(init, StepTokenIssued)
	expect("tokens after the initiator stopped", pendingTokens(t, h1), []string{"host2"})

	// The restarted initiator replaces the orphan with a fresh token;
	// host2 stops right after receiving it, orphaning that one instead.
	init = e.start(0, failAfter(StepClusterFormed))
	stopped(j2, StepRegistered)
	expect("tokens after host2 stopped holding one", pendingTokens(t, h1), []string{"host2"})

	// host2 registers again (its old token is deleted) and stops right
	// after joining, then right after seeing itself online.
	stopped(e.start(1, failAfter(StepJoined)), StepJoined)
	expect("members after host2 joined", memberNames(t, h1), []string{"host1", "host2"})
	expect("tokens after host2 joined", pendingTokens(t, h1), nil)
	stopped(e.start(1, failAfter(StepMemberOnline)), StepMemberOnline)

	// host3 stops right after joining; its restart finds it a member.
	stopped(e.start(2, failAfter(StepJoined)), StepJoined)
	if err := e.start(2, nil).wait(t, 2*time.Minute); err != nil {
		t.Fatalf("host3 after restart: %v", err)
	}
	stopped(init, StepClusterFormed)

	// Everyone again, on the formed cluster: nothing left to do.
	for i := range e.bed.Hosts {
		if err := e.start(i, nil).wait(t, 2*time.Minute); err != nil {
			t.Fatalf("%s on the formed cluster: %v", e.bed.Hosts[i].Name, err)
		}
	}
	e.assertFormed(t)
	for i, h := range e.bed.Hosts {
		st, err := ReadStatus(e.cfgs[i].StateDir)
		want := StepMemberOnline
		if i == 0 {
			want = StepClusterFormed
		}
		if err != nil || st.Step != want || st.LastError != "" {
			t.Errorf("%s: status %+v (%v), want step %s and no error", h.Name, st, err, want)
		}
	}
	for _, h := range []*testbed.Host{h1, h2, h3} {
		s, _, err := h.LXD().GetServer()
		if err != nil {
			t.Fatal(err)
		}
		if s.Environment.Certificate != clusterCert {
			t.Errorf("%s serves another cluster certificate than the first bootstrap made", h.Name)
		}
	}
	if n := strings.Count(e.output(), "host1: cluster-bootstrapped: bootstrapped"); n != 1 {
		t.Errorf("the initiator bootstrapped %d times, want once", n)
	}
	if n := e.reachedCount(h1.Name, StepBootstrapped); n < 5 {
		t.Errorf("initiator reached %s %d times: the restarts did not go through it", StepBootstrapped, n)
	}
	e.assertNoLeak(t)
}
