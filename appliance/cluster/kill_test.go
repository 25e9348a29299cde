package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// helperEnv makes the test binary run one host's service instead of the
// tests: the process a host's systemd unit would start, so a test can kill
// it with SIGKILL as a crash or a power cut would.
const helperEnv = "SSBUILD_CLUSTER_SERVICE_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		os.Exit(serviceMain(path))
	}
	os.Exit(m.Run())
}

// serviceMain is what `ssbuild appliance` does (see the example), run by
// the test binary inside a host's namespaces: it listens and dials there
// directly, and talks to the host's LXD at $LXD_DIR.
func serviceMain(path string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	a, err := config.Load(path)
	if err != nil {
		return fail(err)
	}
	secret, err := config.ReadSecret(a.SecretFile)
	if err != nil {
		return fail(err)
	}
	dir := os.Getenv("LXD_DIR")
	c, err := lxd.ConnectLXDUnix(filepath.Join(dir, "unix.socket"), nil)
	if err != nil {
		return fail(err)
	}
	svc, err := New(Options{Host: Host{Config: a, Secret: secret, LXD: c, LXDDir: dir,
		Progress: progress.New(os.Stdout, progress.Plain)},
		BackoffInitial: 200 * time.Millisecond, BackoffMax: 2 * time.Second})
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := svc.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

// TestSurvivesKillAtEveryStep runs each host's service as its own process
// inside the host and kills it (SIGKILL) as soon as it reports each named
// step in turn, restarting it every time: crashes land wherever the
// process is, also in the middle of an LXD join. The hosts must still end
// in the one cluster the first bootstrap made.
func TestSurvivesKillAtEveryStep(t *testing.T) {
	e := newEnv(t, 3)
	plans := [][]Step{
		// One token: host3 may get its own from host2 while host1 is down.
		{StepLXDInitialised, StepBootstrapped, StepServing, StepTokenIssued, StepClusterFormed},
		{StepLXDInitialised, StepRegistered, StepJoined, StepMemberOnline},
		{StepRegistered, StepJoined},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	results := make([]error, len(plans))
	kills := make([]int, len(plans))
	for i := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kills[i], results[i] = e.runKilling(ctx, i, plans[i])
		}()
	}
	wg.Wait()
	for i, err := range results {
		h := e.bed.Hosts[i]
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if kills[i] != len(plans[i]) {
			t.Errorf("%s killed %d times, planned %d", h.Name, kills[i], len(plans[i]))
		}
	}
	e.assertFormed(t)
	// A kill can land after LXD has bootstrapped but before the service
	// says so: at most one bootstrap is reported, and assertFormed has
	// checked there is one cluster.
	if n := strings.Count(e.output(), "host1: cluster-bootstrapped: bootstrapped"); n > 1 {
		t.Errorf("the initiator bootstrapped %d times", n)
	}
	e.assertNoLeak(t)
}

// runKilling runs host i's service until it succeeds, killing it when it
// reports the next step of plan. It returns how many kills it did.
func (e *env) runKilling(ctx context.Context, i int, plan []Step) (int, error) {
	h := e.bed.Hosts[i]
	path := filepath.Join(h.Dir, "appliance.yaml")
	kills := 0
	for run := 1; ; run++ {
		if ctx.Err() != nil {
			return kills, ctx.Err()
		}
		cmd := h.Command(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(cmd.Env, helperEnv+"="+path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return kills, err
		}
		if err := cmd.Start(); err != nil {
			return kills, fmt.Errorf("start service: %w", err)
		}
		killed := false
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(e, line)
			if !killed && len(plan) > 0 && (line == h.Name+": "+string(plan[0]) || strings.HasPrefix(line, h.Name+": "+string(plan[0])+": ")) {
				// nsenter execs the service in its place: this PID is the
				// service's own.
				_ = cmd.Process.Kill()
				killed = true
				plan = plan[1:]
				kills++
				fmt.Fprintf(e, "test: killed %s's service (run %d, pid %d)\n", h.Name, run, cmd.Process.Pid)
			}
		}
		err = cmd.Wait()
		if killed {
			continue
		}
		if err != nil {
			return kills, fmt.Errorf("run %d: %v: %s", run, err, stderr.String())
		}
		return kills, nil
	}
}
