package service_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
	"github.com/sovereign-stack/ssbuild/testkit/deploytest"
	"github.com/sovereign-stack/ssbuild/testkit/servicetest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// asServiceEnv makes the test binary a host's service: the registry's
// dqlite opens its sockets from C threads, which only a process inside the
// host's network namespace puts there, so each host's service.Run is a
// process of its own in its host, as its systemd unit would start it.
const asServiceEnv = "SSBUILD_TEST_SERVICE_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(asServiceEnv); path != "" {
		os.Exit(runService(path))
	}
	code := m.Run()
	deploytest.Cleanup()
	os.Exit(code)
}

// runService is `ssbuild appliance run --config path` in short: service.Run
// until SIGTERM, progress lines on stderr.
func runService(path string) int {
	a, err := config.Load(path)
	if err == nil {
		var secret []byte
		secret, err = config.ReadSecret(a.SecretFile)
		var c lxd.InstanceServer
		if err == nil {
			c, err = lxd.ConnectLXDUnix(filepath.Join(os.Getenv("LXD_DIR"), "unix.socket"), nil)
		}
		if err == nil {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
			defer stop()
			err = service.Run(ctx, service.Options{Config: a, Secret: secret, LXD: c, LXDDir: os.Getenv("LXD_DIR"),
				Progress: progress.New(os.Stderr, progress.Plain), DeployBackoff: 2 * time.Second})
			if ctx.Err() != nil {
				err = nil
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestFirstBootDeploysDemo is issue 6's first boot end to end on three
// bed hosts: each host's own service forms the cluster and the registry,
// and the initiator, whose appliance.yaml has a deploy section as the
// installer writes it, deploys the demo recipe by itself. While its recipe
// file is missing, status shows the failed deploy as the host's last error
// and the service retries; once it is there, a user sees "deployed" in
// status and the sites answering on the www member's port 80; a restarted
// service deploys again with 0 mutations.
func TestFirstBootDeploysDemo(t *testing.T) {
	img := deploytest.DemoImage(t)
	bed := testbed.New(t, testbed.Options{Hosts: 3})
	hosts, secret := configtest.ForBed(t, bed)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()

	// The recipe file the installer writes to /etc/ssbuild/recipe.yaml: the
	// demo recipe with the bed's pool and network (deploy reads only
	// cluster.storage and cluster.networks from the cluster section; the
	// members it places instances on are LXD's, so the recipe's hosts
	// demo1-3 can stay as shipped while the bed's are host1-3).
	recipeFile, err := servicetest.WithDeploy(hosts, deploytest.BedRecipe(t), img)
	if err != nil {
		t.Fatal(err)
	}
	init := hosts[0]
	// The recipe file is missing at first: the deploy fails, status says
	// why, and the service retries (and serves the registry meanwhile).
	if err := os.Rename(recipeFile, recipeFile+".later"); err != nil {
		t.Fatal(err)
	}

	log := &serviceLog{t: t}
	services := make([]*servicetest.Process, len(hosts))
	for i, h := range hosts {
		services[i] = &servicetest.Process{Host: h, Line: log.add,
			Command: func(ctx context.Context, h configtest.Host) *exec.Cmd {
				cmd := h.Bed.Command(ctx, os.Args[0])
				cmd.Env = append(cmd.Env, asServiceEnv+"="+h.Path)
				return cmd
			}}
	}
	t.Cleanup(func() {
		for _, s := range services {
			if err := s.Stop(); err != nil {
				t.Error(err)
			}
		}
		if strings.Contains(log.String(), string(secret)) {
			t.Error("the cluster secret appears in the services' output")
		}
	})
	began := time.Now()
	for _, s := range services {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	failing := waitStatus(t, ctx, init, 10*time.Minute, "serving with the failed deploy as its last error", func(hs service.HostStatus) bool {
		return hs.Source == service.FromRegistry && hs.Step == string(service.StepServing) &&
			strings.Contains(hs.LastError, "deploy (attempt") && strings.Contains(hs.LastError, recipeFile)
	})
	t.Logf("status with the recipe file missing: %s, last error %q", failing.Step, failing.LastError)
	fixed := time.Now()
	if err := os.Rename(recipeFile+".later", recipeFile); err != nil {
		t.Fatal(err)
	}
	st := waitDeployed(t, ctx, init, began, 20*time.Minute)
	t.Logf("figure: services started to the initiator's status deployed: %s, %s of it after the recipe file came (%s)",
		time.Since(began).Round(time.Second), time.Since(fixed).Round(time.Second), st.Detail)
	if st.LastError != "" {
		t.Errorf("deployed, but the last error is still %q", st.LastError)
	}

	r := service.Status(ctx, init.Config, init.Bed.LXD(), nil)
	var text strings.Builder
	if err := r.Write(&text, time.Now()); err != nil {
		t.Fatal(err)
	}
	t.Logf("status:\n%s", text.String())
	for _, want := range []string{"host1  deployed", "host2  serving", "host3  serving", "Hosts (from the registry)"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("status lacks %q", want)
		}
	}

	project := deploytest.BedRecipe(t).Deployments[0].Project()
	www := wwwMember(t, bed, project)
	for host, want := range map[string]string{
		"demo.example": "ghost demo.example", "www.blog.example": "ghost blog.example",
		"relay.blog.example":  "nostr-relay blog.example",
		"btcpay.demo.example": "btcpay demo.example", // the btcpay instance, through the www proxy
	} {
		if got := askSite(t, ctx, bed, www, host); got != want {
			t.Errorf("port 80 of %s for %s answered %q, want %q", www.Name, host, got, want)
		}
	}
	secretsFile := secrets.File(filepath.Join(init.Config.StateDir, service.DeployStateDir), project)
	if fi, err := os.Stat(secretsFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the deployment's secrets file %s: %v, %v; want mode 0600", secretsFile, fi, err)
	} else if set, err := secrets.Ensure(filepath.Dir(secretsFile), project, nil); err == nil {
		for _, n := range set.Names() {
			if v, _ := set.Get(n); strings.Contains(log.String(), v) {
				t.Errorf("the deployment's secret %s appears in the service's output", n)
			}
		}
	}

	// systemctl restart: the service reconciles again, changing nothing.
	if err := services[0].Stop(); err != nil {
		t.Error(err)
	}
	restarted := time.Now()
	if err := services[0].Start(ctx); err != nil {
		t.Fatal(err)
	}
	st = waitDeployed(t, ctx, init, restarted, 10*time.Minute)
	t.Logf("figure: restarted initiator to deployed again: %s (%s)", time.Since(restarted).Round(time.Second), st.Detail)
	if !strings.Contains(st.Detail, " 0 mutations") {
		t.Errorf("the re-deploy after a restart: %q, want 0 mutations", st.Detail)
	}
	if got := askSite(t, ctx, bed, www, "demo.example"); got != "ghost demo.example" {
		t.Errorf("after the restart demo.example answered %q", got)
	}
}

func waitDeployed(t *testing.T, ctx context.Context, h configtest.Host, since time.Time, timeout time.Duration) service.HostStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := servicetest.WaitDeployed(ctx, h, since)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStatus polls the host's status until ok says it is what is wanted.
func waitStatus(t *testing.T, ctx context.Context, h configtest.Host, timeout time.Duration, what string, ok func(service.HostStatus) bool) service.HostStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last service.HostStatus
	for {
		for _, hs := range service.Status(ctx, h.Config, h.Bed.LXD(), nil).Hosts {
			if hs.Name == h.Bed.Name {
				if ok(hs) {
					return hs
				}
				last = hs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s within %s; last: %+v", h.Bed.Name, what, timeout, last)
		}
		time.Sleep(time.Second)
	}
}

// wwwMember is the bed host the deployment's www instance runs on.
func wwwMember(t *testing.T, bed *testbed.Bed, project string) *testbed.Host {
	t.Helper()
	in, _, err := bed.Hosts[0].LXD().UseProject(project).GetInstance("www")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range bed.Hosts {
		if h.Name == in.Location {
			return h
		}
	}
	t.Fatalf("www runs on %q, not a bed host", in.Location)
	return nil
}

// askSite is the body of site's answer on port 80 of the www member.
func askSite(t *testing.T, ctx context.Context, bed *testbed.Bed, at *testbed.Host, site string) string {
	t.Helper()
	_, body, err := deploytest.AskSite(ctx, bed, at.Name, "http://"+site+"/")
	if err != nil {
		t.Error(err)
	}
	return body
}

// serviceLog keeps every line the services printed (for the leak checks)
// and shows them in the test log.
type serviceLog struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *serviceLog) add(line string) {
	l.t.Logf("%s", line)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(line + "\n")
}

func (l *serviceLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
