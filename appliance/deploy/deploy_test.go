package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/deploytest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// logBuffer keeps every progress line (to search for secrets) and shows
// them in the test log.
type logBuffer struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *logBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return w.b.Write(p)
}

func (w *logBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestDeployDemoOnThreeHosts is issue 6's user check on a real three-host
// LXD cluster formed by the hosts' own cluster service, with real Docker
// inside the instances: the demo deployment's instances land on different
// members and the reverse proxy answers for every site with the right
// backend; a re-deploy changes nothing; a changed recipe recreates only
// what it changes; down keeps the data for the next deploy; down --purge
// removes it (after a backup, restored into a freshly formed cluster);
// the generated secrets are 0600 and never in the output.
func TestDeployDemoOnThreeHosts(t *testing.T) {
	img := deploytest.DemoImage(t)
	bed := formedBed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	log := &logBuffer{t: t}
	r := deploytest.BedRecipe(t)
	o := deploy.Options{LXD: bed.Hosts[0].LXD(), Recipe: r, ImageDir: img,
		StateDir: t.TempDir(), Progress: progress.New(log, progress.Plain)}
	d := r.Deployments[0]
	project := d.Project()

	t.Run("virtual machines are refused before any change", func(t *testing.T) {
		def, err := recipes.Open("default")
		if err != nil {
			t.Fatal(err)
		}
		// The default's instances are containers; a recipe choosing a VM
		// must be refused before anything changes.
		def.Deployments[0].Instances.WWW.Type = "virtual-machine"
		vo := o
		vo.Recipe = def
		_, err = deploy.Deploy(ctx, vo)
		if err == nil || !strings.Contains(err.Error(), "deployments[0].instances.www.type: virtual-machine") || !strings.Contains(err.Error(), "set type: container") {
			t.Fatalf("deploying the default recipe's VMs: %v; want an error naming the field and the fix", err)
		}
		if _, _, err := o.LXD.GetProject(def.Deployments[0].Project()); err == nil {
			t.Errorf("the refused deployment's project %s was created", def.Deployments[0].Project())
		}
		if _, _, err := o.LXD.GetImageAlias(deploy.BaseImageAlias); err == nil {
			t.Error("the base image was imported for a refused deployment")
		}
	})

	start := time.Now()
	rep, err := deploy.Deploy(ctx, o)
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	t.Logf("first deploy: %s, %d mutations", time.Since(start).Round(time.Millisecond), rep.Mutations)
	members := map[string]string{}
	for _, in := range rep.Instances {
		if prev, ok := members[in.Member]; ok {
			t.Errorf("instances %s and %s both on member %s", prev, in.Name, in.Member)
		}
		members[in.Member] = in.Name
	}
	if len(rep.Instances) != 2 {
		t.Fatalf("deployed %d instances, want www and btcpay: %+v", len(rep.Instances), rep.Instances)
	}

	// Every instance has an address on the cluster network (its member's
	// bridge, by DHCP), as the owner sees in `lxc list`.
	t.Run("instances get an address on the network", func(t *testing.T) {
		n, _, err := o.LXD.GetNetwork("ssbr0")
		if err != nil {
			t.Fatal(err)
		}
		subnet, err := netip.ParsePrefix(n.Config["ipv4.address"])
		if err != nil {
			t.Fatalf("bridge ssbr0's ipv4.address %q: %v", n.Config["ipv4.address"], err)
		}
		for _, name := range []string{"www", "btcpay"} {
			var got []string
			for range 30 { // DHCP may still be on its way
				st, _, err := o.LXD.UseProject(project).GetInstanceState(name)
				if err != nil {
					t.Fatal(err)
				}
				got = nil
				for _, a := range st.Network["eth0"].Addresses {
					if ip, err := netip.ParseAddr(a.Address); err == nil && a.Family == "inet" && subnet.Masked().Contains(ip) {
						got = append(got, a.Address)
					}
				}
				if len(got) > 0 {
					break
				}
				time.Sleep(time.Second)
			}
			if len(got) == 0 {
				t.Errorf("%s has no IPv4 address in %s on eth0", name, subnet.Masked())
			}
		}
	})

	www := instanceOn(t, bed, o, project, "www")
	for host, want := range map[string]string{
		"demo.example": "ghost demo.example", "www.demo.example": "ghost demo.example",
		"www.blog.example": "ghost blog.example", "relay.blog.example": "nostr-relay blog.example",
	} {
		if got := httpGet(t, ctx, www, host); got != want {
			t.Errorf("www proxy for %s answered %q, want %q", host, got, want)
		}
	}
	if got := httpGet(t, ctx, www, "nowhere.example"); !strings.Contains(got, "nowhere.example") {
		t.Errorf("www proxy for an unknown host answered %q", got)
	}
	// BTCPay runs on another member than www: its names go through the
	// www proxy and the link devices to the btcpay instance.
	for _, host := range []string{"btcpay.demo.example", "btcpay.blog.example"} {
		if got := httpGet(t, ctx, www, host); got != "btcpay demo.example" {
			t.Errorf("www proxy for %s answered %q, want the btcpay instance's %q", host, got, "btcpay demo.example")
		}
	}

	// bitcoind's data starts as the deployment's copy of the pre-loaded chainstate.
	if got := strings.TrimSpace(execIn(t, o, project, "btcpay", "sh", "-c", "wc -c < "+deploy.ChainstatePath+"/regtest/blocks/blk00000.dat")); got != "5000" {
		t.Errorf("the btcpay instance's chainstate block file has %q bytes, want 5000 (the pre-loaded one)", got)
	}

	t.Run("secrets", func(t *testing.T) {
		path := secrets.File(o.StateDir, project)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
		}
		set, err := secrets.Ensure(o.StateDir, project, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(set.Names()) == 0 {
			t.Fatal("the demo deployment has no generated secrets")
		}
		for _, n := range set.Names() {
			v, _ := set.Get(n)
			if len(v) < 16 || strings.Contains(log.String(), v) {
				t.Errorf("secret %s is short or appears in the deploy output", n)
			}
		}
		// The service got the generated value (compared, never printed).
		want, _ := set.Get("btcpay-admin")
		out, _, code, err := lxdexec.Run(o.LXD.UseProject(project), "btcpay", "docker", "exec", project+"-btcpay", "/bin/sh", "-c", "echo \"$ADMIN_PASSWORD\"")
		if err != nil || code != 0 || strings.TrimSpace(out) != want {
			t.Errorf("the btcpay service's ADMIN_PASSWORD is not the generated secret (exec: code %d, %v)", code, err)
		}
	})

	t.Run("backup", func(t *testing.T) { checkBackup(t, ctx, o, project) })
	t.Run("restore", func(t *testing.T) { checkRestore(t, ctx, o, project, www) })
	t.Run("restore test", func(t *testing.T) { checkRestoreTest(t, ctx, o, project, www) })
	t.Run("lightning fence", func(t *testing.T) { checkFence(t, ctx, o, project, www) })
	t.Run("migrate", func(t *testing.T) { checkMigrate(t, ctx, bed, o, project) })

	start = time.Now()
	rep, err = deploy.Deploy(ctx, o)
	if err != nil {
		t.Fatalf("second deploy: %v", err)
	}
	t.Logf("no-change re-deploy: %s, %d mutations", time.Since(start).Round(time.Millisecond), rep.Mutations)
	if rep.Mutations != 0 {
		t.Errorf("a deploy with no change made %d mutations: %+v", rep.Mutations, rep.Instances)
	}

	// The owner adds Gitea to demo.example: the new backend is created and
	// the proxy (its routes changed) recreated; nothing else is touched.
	r.Deployments[0].Sites[0].Services = append(r.Deployments[0].Sites[0].Services, "gitea")
	rep, err = deploy.Deploy(ctx, o)
	if err != nil {
		t.Fatalf("deploy with gitea: %v", err)
	}
	for _, in := range rep.Instances {
		ch := in.Services
		switch in.Name {
		case "www":
			if !slices.Equal(ch.Created, []string{"gitea-demo-example"}) || !slices.Equal(ch.Recreated, []string{"proxy"}) {
				t.Errorf("www: created %v, recreated %v; want only gitea-demo-example created and proxy recreated", ch.Created, ch.Recreated)
			}
		default:
			if len(ch.Created)+len(ch.Recreated)+len(ch.Removed) > 0 {
				t.Errorf("%s changed though its stack did not: %+v", in.Name, ch)
			}
		}
	}
	if got := httpGet(t, ctx, www, "git.demo.example"); got != "gitea demo.example" {
		t.Errorf("git.demo.example answered %q after adding gitea", got)
	}

	// The owner turns btcpay off: its instance goes, its volumes stay and
	// www loses its link to it; turned on again, it is back with its data.
	dockerExec(t, o, project, "btcpay", project+"-btcpay", "sh", "-c", "echo kept > /data/marker")
	off := false
	r.Deployments[0].Instances.BTCPay.Enabled = &off
	rep, err = deploy.Deploy(ctx, o)
	if err != nil {
		t.Fatalf("deploy with btcpay off: %v", err)
	}
	if len(rep.Removed) != 1 || rep.Removed[0].Name != "btcpay" {
		t.Errorf("deploy with btcpay off removed %+v, want btcpay", rep.Removed)
	}
	if _, _, err := o.LXD.UseProject(project).GetInstance("btcpay"); err == nil {
		t.Error("the btcpay instance is still there after the recipe turned it off")
	}
	if in, _, err := o.LXD.UseProject(project).GetInstance("www"); err != nil || in.Devices["btcpay-link"] != nil {
		t.Errorf("www still links to the removed btcpay (%v)", err)
	}
	if doomed, err := deploy.Doomed(ctx, o, d); err != nil || countPrefix(doomed, "volume "+project+"/btcpay-") != 4 {
		t.Errorf("btcpay's 4 volumes (3 and its chainstate) are not all kept: %v, %v", doomed, err)
	}
	r.Deployments[0].Instances.BTCPay.Enabled = nil
	if _, err = deploy.Deploy(ctx, o); err != nil {
		t.Fatalf("deploy with btcpay on again: %v", err)
	}
	if got := dockerExec(t, o, project, "btcpay", project+"-btcpay", "cat", "/data/marker"); got != "kept" {
		t.Errorf("btcpay's data after it was off and on: %q, want %q", got, "kept")
	}
	if got := httpGet(t, ctx, instanceOn(t, bed, o, project, "www"), "btcpay.demo.example"); got != "btcpay demo.example" {
		t.Errorf("btcpay.demo.example after btcpay was off and on: %q", got)
	}

	// Data survives down and a later deploy.
	dockerExec(t, o, project, "www", project+"-ghost-blog-example", "sh", "-c", "echo kept > /data/marker")
	if _, err := deploy.Down(ctx, o, d, false); err != nil {
		t.Fatalf("down: %v", err)
	}
	if ins, _ := o.LXD.UseProject(project).GetInstanceNames(api.InstanceTypeAny); len(ins) != 0 {
		t.Errorf("instances left after down: %v", ins)
	}
	doomed, err := deploy.Doomed(ctx, o, d)
	if err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(doomed, "volume "); n != 7 {
		t.Errorf("after down, purge would delete %d volumes, want the 7 kept (3 per instance, btcpay's chainstate): %v", n, doomed)
	}
	if _, err := deploy.Deploy(ctx, o); err != nil {
		t.Fatalf("deploy after down: %v", err)
	}
	if got := dockerExec(t, o, project, "www", project+"-ghost-blog-example", "cat", "/data/marker"); got != "kept" {
		t.Errorf("the site's data after down and deploy: %q, want %q", got, "kept")
	}
	www = instanceOn(t, bed, o, project, "www")
	if got := httpGet(t, ctx, www, "www.blog.example"); got != "ghost blog.example" {
		t.Errorf("after down and deploy, www.blog.example answered %q", got)
	}

	state, err := deploy.Show(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	state.WriteText(&text)
	t.Logf("show:\n%s", text.String())
	for _, want := range []string{"host1", "host2", "host3", "www", "btcpay", "proxy", "running"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("show does not mention %q", want)
		}
	}

	// Last: it purges the deployment and closes the bed.
	t.Run("backup, down --purge, restore into a fresh cluster", func(t *testing.T) { checkFreshRestore(t, ctx, bed, o, project) })
}

// endpoint is the member an instance runs on, and its address.
type endpoint struct {
	host   *testbed.Host
	addr   string
	client *testbed.Host // another host, the one the test asks from
}

func instanceOn(t *testing.T, bed *testbed.Bed, o deploy.Options, project, name string) endpoint {
	t.Helper()
	in, _, err := o.LXD.UseProject(project).GetInstance(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range bed.Hosts {
		if h.Name == in.Location {
			client := bed.Hosts[0]
			if client == h {
				client = bed.Hosts[1]
			}
			return endpoint{host: h, addr: h.Address.String(), client: client}
		}
	}
	t.Fatalf("%s runs on %q, not a bed host", name, in.Location)
	return endpoint{}
}

// httpGet asks port 80 of the member the instance runs on for / with the
// given Host header, from another bed host (as a machine on the LAN would),
// and returns the trimmed body.
func httpGet(t *testing.T, ctx context.Context, e endpoint, host string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return e.client.DialContext(ctx, network, net.JoinHostPort(e.addr, "80"))
		}}}
	defer client.CloseIdleConnections()
	var last error
	for range 30 { // the proxy may still be starting
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/", nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNotFound {
				return strings.TrimSpace(string(body))
			}
			err = fmt.Errorf("HTTP %s: %s", resp.Status, body)
		}
		last = err
		time.Sleep(time.Second)
	}
	t.Errorf("GET http://%s/ on %s: %v", host, e.addr, last)
	return ""
}

// dockerExec runs a command in a service's container through the
// instance's Docker CLI, as the owner would.
func dockerExec(t *testing.T, o deploy.Options, project, instance, ctr string, cmd ...string) string {
	t.Helper()
	return strings.TrimSpace(execIn(t, o, project, instance, append([]string{"docker", "exec", ctr}, cmd...)...))
}

// execIn runs a command in an instance and returns its output.
func execIn(t *testing.T, o deploy.Options, project, instance string, cmd ...string) string {
	t.Helper()
	out, _, code, err := lxdexec.Run(o.LXD.UseProject(project), instance, cmd...)
	if err != nil || code != 0 {
		t.Fatalf("%v in %s: code %d, %v\n%s", cmd, instance, code, err, out)
	}
	return out
}

func countPrefix(list []string, prefix string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}
