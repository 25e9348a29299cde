package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/configtest"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// asCLIEnv makes the test binary be ssbuild itself: the tests run
// `ssbuild appliance run` and `status` inside a test-bed host as the
// host's systemd unit and its operator would, as processes of their own.
const asCLIEnv = "SSBUILD_TEST_AS_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(asCLIEnv) == "1" {
		os.Exit(run(append([]string{"ssbuild"}, os.Args[1:]...), os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// Without a service or LXD, status still answers from the host's status
// file and says what did not answer; a broken config is invalid input.
func TestApplianceStatusWithNothingRunning(t *testing.T) {
	dir := t.TempDir()
	cfg := strings.NewReplacer("STATE", filepath.Join(dir, "state")).Replace(`host: {name: host2, address: 10.0.0.12}
cluster:
  name: demo
  initiator: host1
  initiatorAddress: 10.0.0.11
  members: [{name: host1, address: 10.0.0.11}, {name: host2, address: 10.0.0.12}]
  storage: {pool: local, driver: dir}
secretFile: /etc/ssbuild/cluster.secret
stateDir: STATE
`)
	path := filepath.Join(dir, "appliance.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	st := cluster.Status{Host: "host2", Role: "joiner", Step: cluster.StepRegistered,
		LastError: "cluster: host2: join via 10.0.0.11:9443: connection refused", Updated: time.Now()}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, "state", service.StatusFile), data, 0o644); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := ssbuild(t, "appliance", "status", "--config", path, "--lxd-dir", dir)
	if code != 0 {
		t.Fatalf("status: code %d: %s", code, errOut)
	}
	for _, want := range []string{"LXD not answering", "registry not answering", "local status file only",
		"host2  registered", "last error: cluster: host2: join via 10.0.0.11:9443: connection refused", "not known"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = ssbuild(t, "appliance", "status", "--config", path, "--lxd-dir", dir, "--json")
	var r service.Report
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
		t.Fatalf("status --json: code %d: %s", code, out)
	}
	if r.Registry != nil || r.RegistryError == "" || r.LXDError == "" || len(r.Hosts) != 2 ||
		r.Hosts[1].Source != service.FromStatusFile || r.Hosts[1].Step != string(cluster.StepRegistered) {
		t.Errorf("status --json: %+v", r)
	}

	// A host upgraded from an ssbuild that kept formation's status in
	// cluster-status.json, not run since: status reads that file.
	st.Step = cluster.StepJoined
	data, _ = json.Marshal(st)
	if err := os.Remove(filepath.Join(dir, "state", service.StatusFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state", "cluster-status.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = ssbuild(t, "appliance", "status", "--config", path, "--lxd-dir", dir, "--json")
	r = service.Report{}
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || len(r.Hosts) != 2 ||
		r.Hosts[1].Source != service.FromStatusFile || r.Hosts[1].Step != string(cluster.StepJoined) {
		t.Errorf("status --json from the old cluster-status.json: code %d: %s", code, out)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(cfg, "driver: dir", "driver: ext4", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = ssbuild(t, "appliance", "status", "--config", bad)
	if code != exitInvalid || !strings.Contains(errOut, "bad.yaml:7:") {
		t.Errorf("bad config: code %d, %q; want %d and file:line", code, errOut, exitInvalid)
	}
}

// Three hosts form one LXD cluster and one 3-node registry, each host's
// `ssbuild appliance run` a process of its own inside the host; each is
// killed right after a service step and restarted. Then the initiator
// host is lost (its LXD and its service SIGKILLed): the two others still
// answer status, elect a registry leader and write to the registry; a
// survivor's service killed and restarted then converges.
func TestApplianceInitiatorLost(t *testing.T) {
	bed := testbed.New(t, testbed.Options{Hosts: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	hosts := newApplianceHosts(t, bed)

	// Stopped (SIGTERM, as systemctl stop) while it waits for the
	// initiator, a joiner exits cleanly; status says where it was.
	hosts[1].stopWhileJoining(ctx, t)
	if r := hosts[1].status(t); r.Hosts[1].Source != service.FromStatusFile || r.Hosts[1].Step != string(cluster.StepLXDInitialised) || r.Hosts[1].LastError != "" {
		t.Errorf("host2's status after a stop while joining: %+v", r.Hosts[1])
	}

	began := time.Now()
	hosts[0].start(ctx, t, service.StepRegistryOpen) // right after it bootstrapped the registry
	hosts[1].start(ctx, t, service.StepRegistryOpen) // before its host row and join attempt
	hosts[2].start(ctx, t, service.StepHostRecorded) // after them
	for _, h := range hosts {
		h.waitFor(t, 4*time.Minute, "3 LXD members online, 3 registry voters, every host serving", func(r *service.Report) string {
			return formed(r, 3)
		})
	}
	t.Logf("figure: services started to 3 LXD members online + 3-voter registry + every host serving: %s", time.Since(began).Round(100*time.Millisecond))
	for i := range hosts {
		if n := hosts[i].kills(); n != 1 {
			t.Errorf("%s's service was killed %d times, want 1", hosts[i].bed.Name, n)
		}
	}
	r := hosts[0].status(t)
	checkRecords(t, hosts, r)
	out := hosts[0].statusText(t)
	for _, want := range []string{"LXD cluster (from host1's LXD)", "leader " + r.Registry.Leader, "Hosts (from the registry)", "host3  serving"} {
		if !strings.Contains(out, want) {
			t.Errorf("host1's status lacks %q:\n%s", want, out)
		}
	}

	// The initiator host goes away at once, as a power cut would.
	lost := time.Now()
	if err := hosts[0].bed.KillLXD(); err != nil {
		t.Fatal(err)
	}
	hosts[0].kill()
	deadReg := config.Cluster{RegistryPort: hosts[0].cfg.Cluster.RegistryPort}.RegistryAddress(hosts[0].cfg.Host.Address)
	for i, h := range hosts[1:] {
		other := hosts[2-i]
		h.waitFor(t, 90*time.Second, "a new registry leader and "+other.bed.Name+"'s heartbeat written after the loss", func(r *service.Report) string {
			switch {
			case r.LXDError != "" || len(r.LXDMembers) != 3:
				return fmt.Sprintf("LXD: %d members, %s", len(r.LXDMembers), r.LXDError)
			case r.Registry == nil:
				return r.RegistryError
			case r.Registry.Leader == deadReg:
				return "leader is still the lost initiator's node"
			case len(r.Hosts) != 3:
				return fmt.Sprintf("%d hosts", len(r.Hosts))
			}
			for _, hs := range r.Hosts {
				if hs.Name == other.bed.Name && (hs.Source != service.FromRegistry || !hs.Updated.After(lost)) {
					return fmt.Sprintf("%s last written %s, before the loss at %s", hs.Name, hs.Updated.Format(time.TimeOnly), lost.Format(time.TimeOnly))
				}
			}
			return ""
		})
	}
	t.Logf("figure: initiator lost to a new leader and writes seen on both survivors: %s", time.Since(lost).Round(100*time.Millisecond))
	out = hosts[2].statusText(t)
	for _, want := range []string{"Registry:\n  leader 10.", "host1  serving", "host2  serving", "host3  serving"} {
		if !strings.Contains(out, want) {
			t.Errorf("host3's status after the loss lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "leader "+deadReg) {
		t.Errorf("host3's status names the lost initiator's node as leader:\n%s", out)
	}

	// A survivor's service crashes and comes back with the initiator still
	// gone: its node rejoins from its own directory and the registry has
	// quorum again.
	hosts[1].kill()
	restarted := time.Now()
	hosts[1].start(ctx, t, "")
	hosts[1].waitFor(t, 2*time.Minute, "host2 serving again with a leader", func(r *service.Report) string {
		if r.Registry == nil {
			return r.RegistryError
		}
		for _, hs := range r.Hosts {
			if hs.Name == "host2" && (hs.Step != string(service.StepServing) || !hs.Updated.After(restarted)) {
				return fmt.Sprintf("host2 at %s, written %s", hs.Step, hs.Updated.Format(time.TimeOnly))
			}
		}
		return ""
	})
	t.Logf("figure: survivor's service restarted to serving: %s", time.Since(restarted).Round(100*time.Millisecond))
	checkRecords(t, hosts, hosts[2].status(t))

	// The initiator's power comes back: the same service converges to the
	// same cluster and registry, without bootstrapping either again.
	back := time.Now()
	if err := hosts[0].bed.StartLXD(ctx); err != nil {
		t.Fatal(err)
	}
	hosts[0].start(ctx, t, "")
	for _, h := range hosts {
		h.waitFor(t, 2*time.Minute, "the initiator back: 3 LXD members online, 3 registry voters, every host serving", func(r *service.Report) string {
			return formed(r, 3)
		})
	}
	t.Logf("figure: initiator host back to all 3 serving: %s", time.Since(back).Round(100*time.Millisecond))
	r = hosts[0].status(t)
	checkRecords(t, hosts, r)
	if out := hosts[0].out.String(); strings.Count(out, "host1: cluster-bootstrapped: bootstrapped") != 1 || strings.Count(out, "host1: registry: bootstrapping") != 1 {
		t.Errorf("the initiator bootstrapped the LXD cluster or the registry more than once")
	}

	// With a joiner host lost, the initiator's service restarts: formation
	// waits for the lost member, but the registry is served meanwhile.
	if err := hosts[2].bed.KillLXD(); err != nil {
		t.Fatal(err)
	}
	hosts[2].kill()
	hosts[0].kill()
	// Until LXD marks host3 offline (about 20 s), formation would complete.
	hosts[0].waitFor(t, 90*time.Second, "host3 offline in LXD", func(r *service.Report) string {
		for _, m := range r.LXDMembers {
			if m.Name == "host3" && m.Status == "Online" {
				return "host3 is still Online"
			}
		}
		return ""
	})
	restarted = time.Now()
	hosts[0].start(ctx, t, "")
	hosts[0].waitFor(t, 90*time.Second, "host1 serving the registry while host3 is lost", func(r *service.Report) string {
		if r.Registry == nil {
			return r.RegistryError
		}
		for _, hs := range r.Hosts {
			if hs.Name == "host1" && (hs.Step != string(service.StepServing) || !hs.Updated.After(restarted)) {
				return fmt.Sprintf("host1 at %s, written %s", hs.Step, hs.Updated.Format(time.TimeOnly))
			}
		}
		return ""
	})
	t.Logf("figure: initiator restarted with a joiner lost, to serving: %s", time.Since(restarted).Round(100*time.Millisecond))
	// Formation said it was waiting (fewer than 3 members online: 2, or 0
	// while LXD's heartbeats catch up after the restart).
	if out := hosts[0].out.String(); !regexp.MustCompile(`host1: [0-2] of 3 members online`).MatchString(out[strings.LastIndex(out, "host1: registry node found"):]) {
		t.Errorf("host1's formation did not wait for the lost member: the test did not test serving alongside it")
	}

	// `ssbuild cluster rotate-secret` on host2 while host3 is still lost:
	// host1 and host2 take the new secret, host3 is named as keeping the
	// old one, and the command fails for it.
	oldSecret, err := config.ReadSecret(hosts[2].cfg.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	newFile := filepath.Join(hosts[1].bed.Dir, "new.secret")
	rotate := hosts[1].bed.Command(ctx, os.Args[0], "cluster", "rotate-secret", "--config", hosts[1].path, "--out", newFile)
	rotate.Env = append(rotate.Env, asCLIEnv+"=1")
	var rotateErr strings.Builder
	rotate.Stderr = &rotateErr
	stdout, err := rotate.Output()
	hosts[1].out.add(string(stdout) + rotateErr.String())
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(stdout), "host1: holds the new secret") ||
		!strings.Contains(string(stdout), "host2: holds the new secret") || !strings.Contains(string(stdout), "host3: kept the old secret") ||
		!strings.Contains(rotateErr.String(), "1 of 3 hosts did not take the new secret: host3") {
		t.Errorf("rotate-secret with host3 lost: %v\n%s%s", err, stdout, rotateErr.String())
	}
	newSecret, err := config.ReadSecret(newFile)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hosts {
		got, err := config.ReadSecret(h.cfg.SecretFile)
		want := newSecret
		if i == 2 {
			want = oldSecret
		}
		if err != nil || string(got) != string(want) {
			t.Errorf("%s's secret file after the rotation: new %v, old %v (%v)", h.bed.Name, string(got) == string(newSecret), string(got) == string(oldSecret), err)
		}
		if strings.Contains(h.out.String(), string(newSecret)) {
			t.Errorf("the new secret appears in %s's output", h.bed.Name)
		}
	}
}

// formed says what is missing before n hosts are formed, from one host's view.
func formed(r *service.Report, n int) string {
	online := 0
	for _, m := range r.LXDMembers {
		if m.Status == "Online" {
			online++
		}
	}
	if online != n {
		return fmt.Sprintf("%d LXD members online %s", online, r.LXDError)
	}
	if r.Registry == nil {
		return r.RegistryError
	}
	voters := 0
	for _, m := range r.Registry.Members {
		if m.Role == "voter" {
			voters++
		}
	}
	if voters != n || r.Registry.Leader == "" {
		return fmt.Sprintf("registry: %d voters, leader %q", voters, r.Registry.Leader)
	}
	for _, h := range r.Hosts {
		if h.Source != service.FromRegistry || h.Step != string(service.StepServing) {
			return fmt.Sprintf("%s at %q (%s)", h.Name, h.Step, h.Source)
		}
	}
	return ""
}

// checkRecords: one row per host with the fingerprint of its own LXD server
// certificate, and exactly one successful join per joiner, whatever the
// kills and restarts.
func checkRecords(t *testing.T, hosts []*applianceHost, r *service.Report) {
	t.Helper()
	var names []string
	for _, h := range r.Registry.Hosts {
		names = append(names, h.Name)
		for _, ah := range hosts {
			if ah.bed.Name != h.Name {
				continue
			}
			cert, err := tls.LoadX509KeyPair(filepath.Join(ah.bed.LXDDir, "server.crt"), filepath.Join(ah.bed.LXDDir, "server.key"))
			if err != nil {
				t.Fatal(err)
			}
			if fp := cluster.Fingerprint(cert.Leaf); h.Fingerprint != fp {
				t.Errorf("%s: registry fingerprint %s, its LXD server certificate's is %s", h.Name, h.Fingerprint, fp)
			}
		}
	}
	if !slices.Equal(names, []string{"host1", "host2", "host3"}) {
		t.Errorf("registry hosts %v", names)
	}
	joins := map[string]int{}
	for _, a := range r.Registry.JoinAttempts {
		if a.Result == registry.JoinSucceeded {
			joins[a.Host]++
		}
	}
	if joins["host1"] != 0 || joins["host2"] != 1 || joins["host3"] != 1 {
		t.Errorf("successful joins recorded %v, want host2 and host3 once each", joins)
	}
}

// applianceHost is one test-bed host with its appliance.yaml and its
// service process.
type applianceHost struct {
	bed  *testbed.Host
	cfg  *config.Appliance
	path string
	out  *sharedLog // every line the services and status printed, for the leak check

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when the current process has been waited for
	killed int
}

func newApplianceHosts(t *testing.T, bed *testbed.Bed) []*applianceHost {
	hosts, secret := configtest.ForBed(t, bed)
	var out []*applianceHost
	log := &sharedLog{}
	for _, h := range hosts {
		out = append(out, &applianceHost{bed: h.Bed, cfg: h.Config, path: h.Path, out: log})
	}
	t.Cleanup(func() {
		for _, h := range out {
			h.stop(t)
		}
		// Secrets never printed: not by the services, not by status.
		all := log.String()
		if !strings.Contains(all, "registration") || !strings.Contains(all, "Registry") {
			t.Errorf("the leak check saw no service or status output")
		}
		if strings.Contains(all, string(secret)) || strings.Contains(strings.ToLower(all), string(secret)) {
			t.Errorf("the cluster secret appears in the services' or status output")
		}
	})
	return out
}

type sharedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *sharedLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s + "\n")
}

func (l *sharedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs `ssbuild appliance run` inside the host. With killAt set, the
// process is SIGKILLed as soon as it reports that step and started again.
func (h *applianceHost) start(ctx context.Context, t *testing.T, killAt cluster.Step) {
	cmd := h.bed.Command(ctx, os.Args[0], "appliance", "run", "--config", h.path)
	cmd.Env = append(cmd.Env, asCLIEnv+"=1")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 40 * time.Second
	stderr, err := cmd.StderrPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		// Errorf: this also runs in the goroutine that restarts a killed service.
		t.Errorf("%s: start the service: %v", h.bed.Name, err)
		return
	}
	done := make(chan struct{})
	h.mu.Lock()
	h.cmd, h.done = cmd, done
	h.mu.Unlock()
	go func() {
		defer close(done)
		killed := false
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			t.Logf("%s", line)
			h.out.add(line)
			if killAt != "" && !killed && (line == h.bed.Name+": "+string(killAt) || strings.HasPrefix(line, h.bed.Name+": "+string(killAt)+": ")) {
				// nsenter execs the service in its place: this PID is the service's.
				_ = cmd.Process.Kill()
				killed = true
				t.Logf("test: killed %s's service at %s (pid %d)", h.bed.Name, killAt, cmd.Process.Pid)
			}
		}
		err := cmd.Wait()
		if killed {
			h.mu.Lock()
			h.killed++
			h.mu.Unlock()
			if ctx.Err() == nil {
				h.start(ctx, t, "")
			}
			return
		}
		if err != nil && ctx.Err() == nil {
			t.Logf("%s: service ended: %v", h.bed.Name, err)
		}
	}()
}

// stopWhileJoining starts the service with no initiator to answer it and
// stops it with SIGTERM at its first failed join attempt: it must exit 0.
func (h *applianceHost) stopWhileJoining(ctx context.Context, t *testing.T) {
	t.Helper()
	cmd := h.bed.Command(ctx, os.Args[0], "appliance", "run", "--config", h.path)
	cmd.Env = append(cmd.Env, asCLIEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		h.out.add(sc.Text())
		if strings.HasPrefix(sc.Text(), h.bed.Name+": attempt 1 to join") {
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: service stopped while joining: %v (want exit 0)\n%s", h.bed.Name, err, strings.Join(lines, "\n"))
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, h.bed.Name+": stopped: ") {
		t.Errorf("%s: last line %q, want it to say it stopped", h.bed.Name, last)
	}
}

func (h *applianceHost) kills() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.killed
}

// current is the running process and its done channel.
func (h *applianceHost) current() (*exec.Cmd, chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cmd, h.done
}

// kill SIGKILLs the service and waits until it is gone.
func (h *applianceHost) kill() {
	cmd, done := h.current()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// stop ends the service as systemctl stop would (SIGTERM), then kills it.
func (h *applianceHost) stop(t *testing.T) {
	for {
		cmd, done := h.current()
		if cmd == nil {
			return
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			t.Errorf("%s: service did not stop on SIGTERM within 40 s", h.bed.Name)
			_ = cmd.Process.Kill()
			<-done
		}
		if again, _ := h.current(); again == cmd { // no restart in between
			return
		}
	}
}

func (h *applianceHost) statusCmd(args ...string) *exec.Cmd {
	cmd := h.bed.Command(context.Background(), os.Args[0], append([]string{"appliance", "status", "--config", h.path}, args...)...)
	cmd.Env = append(cmd.Env, asCLIEnv+"=1")
	return cmd
}

func (h *applianceHost) status(t *testing.T) *service.Report {
	t.Helper()
	r, err := h.tryStatus()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (h *applianceHost) tryStatus() (*service.Report, error) {
	out, err := h.statusCmd("--json").Output()
	h.out.add(string(out))
	if err != nil {
		return nil, fmt.Errorf("%s: ssbuild appliance status --json: %w", h.bed.Name, err)
	}
	var r service.Report
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("%s: status --json: %w\n%s", h.bed.Name, err, out)
	}
	return &r, nil
}

func (h *applianceHost) statusText(t *testing.T) string {
	t.Helper()
	out, err := h.statusCmd().Output()
	h.out.add(string(out))
	if err != nil {
		t.Fatalf("%s: ssbuild appliance status: %v", h.bed.Name, err)
	}
	return string(out)
}

// waitFor polls the host's status until missing returns "".
func (h *applianceHost) waitFor(t *testing.T, timeout time.Duration, what string, missing func(*service.Report) string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		r, err := h.tryStatus()
		if err != nil {
			last = err.Error()
		} else if last = missing(r); last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s within %s; last: %s", h.bed.Name, what, timeout, last)
		}
		time.Sleep(time.Second)
	}
}
