package service_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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

	"github.com/sovereign-stack/ssbuild/appliance/config"
	"github.com/sovereign-stack/ssbuild/appliance/config/configtest"
	"github.com/sovereign-stack/ssbuild/appliance/deploy/deploytest"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/appliance/service/servicetest"
	"github.com/sovereign-stack/ssbuild/appliance/testbed"
	"github.com/sovereign-stack/ssbuild/internal/progress"
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
// bed hosts (a fourth joins later): each host's own service forms the
// cluster and the registry,
// and the initiator, whose appliance.yaml has a deploy section as the
// installer writes it, deploys the demo recipe by itself. While its recipe
// file is missing, status shows the failed deploy as the host's last error
// and the service retries; once it is there, a user sees "deployed" in
// status and the sites answering on the www member's port 80; a fourth
// host from a later recipe revision joins while the site keeps answering;
// a restarted service deploys again with 0 mutations.
func TestFirstBootDeploysDemo(t *testing.T) {
	img := deploytest.DemoImage(t)
	// host4 is added later by a new recipe revision: host1-3's configs
	// list three hosts, host4's four.
	bed := testbed.New(t, testbed.Options{Hosts: 4})
	hosts, secret := configtest.ForBed(t, bed)
	for _, h := range hosts[:3] {
		h.Config.Cluster.Members = h.Config.Cluster.Members[:3]
		data, err := config.Marshal(h.Config)
		if err == nil {
			err = os.WriteFile(h.Path, data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
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
	for _, s := range services[:3] {
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

	// A fourth host from a later recipe revision joins while the sites
	// keep answering (asked every half second meanwhile).
	asking, stopAsking := context.WithCancel(ctx)
	failures := make(chan []string, 1)
	go func() {
		var failed []string
		for asking.Err() == nil {
			if body, err := askOnce(asking, bed, www, "demo.example"); err != nil && asking.Err() == nil {
				failed = append(failed, err.Error())
			} else if err == nil && body != "ghost demo.example" {
				failed = append(failed, "answered "+body)
			}
			time.Sleep(500 * time.Millisecond)
		}
		failures <- failed
	}()
	added := time.Now()
	if err := services[3].Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ctx, hosts[3], 5*time.Minute, "host4 serving", func(hs service.HostStatus) bool {
		return hs.Source == service.FromRegistry && hs.Step == string(service.StepServing) && hs.Updated.After(added)
	})
	t.Logf("figure: host4's service start to serving, sites answering meanwhile: %s", time.Since(added).Round(time.Second))
	time.Sleep(2 * time.Second)
	stopAsking()
	if failed := <-failures; len(failed) > 0 {
		t.Errorf("demo.example failed %d times while host4 joined: %v", len(failed), failed)
	}
	if m, _, err := init.Bed.LXD().GetClusterMember("host4"); err != nil || m.Status != "Online" {
		t.Errorf("host4 is not an online member: %+v, %v", m, err)
	}

	// systemctl restart: the service reconciles again, changing nothing
	// (host4 is a member now: instances stay where they are).
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

// askOnce asks port 80 of member at for site once (2 s), from another
// bed host: a failure is not retried, so a blip shows.
func askOnce(ctx context.Context, bed *testbed.Bed, at *testbed.Host, site string) (string, error) {
	from := bed.Hosts[0]
	if from == at {
		from = bed.Hosts[1]
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return from.DialContext(ctx, network, net.JoinHostPort(at.Address.String(), "80"))
		}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+site+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
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
