package lxdinit_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/lxdinit"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestApply runs LXD initialisation against real daemons of one shared bed;
// the subtests use names of their own so they do not see each other's work.
func TestApply(t *testing.T) {
	bed := testbed.New(t, testbed.Options{Hosts: 2})
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("first run creates, second changes nothing", func(t *testing.T) {
		cfg := lxdinit.Config{
			HTTPSAddress: net.JoinHostPort(h1.Address.String(), "8443"),
			Pool:         lxdinit.StoragePool{Name: "local", Driver: "dir"},
			Network:      lxdinit.Network{Name: "lxdbr0", IPv4Address: "auto"},
		}
		steps, err := lxdinit.Apply(ctx, h1.LXD(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		wantActions(t, steps, lxdinit.Updated, lxdinit.Created, lxdinit.Created, lxdinit.Updated)

		c := h1.LXD()
		server, _, err := c.GetServer()
		if err != nil {
			t.Fatal(err)
		}
		if got := server.Config["core.https_address"]; got != cfg.HTTPSAddress {
			t.Errorf("core.https_address = %v, want %s", got, cfg.HTTPSAddress)
		}
		pool, _, err := c.GetStoragePool("local")
		if err != nil || pool.Driver != "dir" || pool.Status != api.StoragePoolStatusCreated {
			t.Errorf("pool local: %+v, %v; want a created dir pool", pool, err)
		}
		network, _, err := c.GetNetwork("lxdbr0")
		if err != nil {
			t.Fatal(err)
		}
		v4 := network.Config["ipv4.address"]
		if !network.Managed || network.Type != "bridge" || !isCIDR(v4) || network.Config["ipv6.address"] != "none" {
			t.Errorf("network lxdbr0: managed %v, type %s, config %v; want a managed bridge, ipv4 resolved from auto, no ipv6",
				network.Managed, network.Type, network.Config)
		}
		assertProfile(t, c, "default", "local", "lxdbr0")
		assertReachable(t, ctx, h2, h1, server, cfg.HTTPSAddress)

		// The re-run after a crash at the very end: nothing to do.
		steps, err = lxdinit.Apply(ctx, c, cfg)
		if err != nil {
			t.Fatalf("second run: %v", err)
		}
		wantActions(t, steps, lxdinit.InPlace, lxdinit.InPlace, lxdinit.InPlace, lxdinit.InPlace)
		if network, _, _ := c.GetNetwork("lxdbr0"); network.Config["ipv4.address"] != v4 {
			t.Errorf("second run moved lxdbr0 from %s to %s", v4, network.Config["ipv4.address"])
		}
	})

	t.Run("half-done state converges", func(t *testing.T) {
		c := h2.LXD()
		// A first run that stopped after the pool step...
		if err := c.CreateStoragePool(api.StoragePoolsPost{Name: "half", Driver: "dir"}); err != nil {
			t.Fatal(err)
		}
		// ...and a profile someone pointed elsewhere, old style.
		if err := c.CreateProfile(api.ProfilesPost{Name: "half", ProfilePut: api.ProfilePut{Devices: map[string]map[string]string{
			"eth0": {"type": "nic", "nictype": "bridged", "parent": "elsewhere"},
		}}}); err != nil {
			t.Fatal(err)
		}
		cfg := lxdinit.Config{
			HTTPSAddress: net.JoinHostPort(h2.Address.String(), "8443"),
			Pool:         lxdinit.StoragePool{Name: "half", Driver: "dir"},
			Network:      lxdinit.Network{Name: "halfbr", IPv4Address: "10.99.7.1/24"},
			Profile:      "half",
		}
		steps, err := lxdinit.Apply(ctx, c, cfg)
		if err != nil {
			t.Fatal(err)
		}
		wantActions(t, steps, lxdinit.Updated, lxdinit.InPlace, lxdinit.Created, lxdinit.Updated)
		assertProfile(t, c, "half", "half", "halfbr")
		profile, _, _ := c.GetProfile("half")
		if _, stale := profile.Devices["eth0"]["parent"]; stale {
			t.Errorf("profile half kept the stale eth0 key parent: %v", profile.Devices["eth0"])
		}

		// A network whose address drifted is put back.
		network, etag, _ := c.GetNetwork("halfbr")
		put := network.Writable()
		put.Config["ipv4.address"] = "10.99.8.1/24"
		if err := c.UpdateNetwork("halfbr", put, etag); err != nil {
			t.Fatal(err)
		}
		steps, err = lxdinit.Apply(ctx, c, cfg)
		if err != nil {
			t.Fatal(err)
		}
		wantActions(t, steps, lxdinit.InPlace, lxdinit.InPlace, lxdinit.Updated, lxdinit.InPlace)
		if network, _, _ := c.GetNetwork("halfbr"); network.Config["ipv4.address"] != "10.99.7.1/24" {
			t.Errorf("halfbr ipv4.address = %s after re-run, want 10.99.7.1/24", network.Config["ipv4.address"])
		}
	})

	t.Run("bad driver is refused and creates nothing", func(t *testing.T) {
		c := h2.LXD()
		before, _, err := c.GetServer()
		if err != nil {
			t.Fatal(err)
		}
		cfg := lxdinit.Config{
			HTTPSAddress: net.JoinHostPort(h2.Address.String(), "9443"),
			Pool:         lxdinit.StoragePool{Name: "bad", Driver: "nosuchfs"},
			Network:      lxdinit.Network{Name: "badbr", IPv4Address: "auto"},
			Profile:      "bad",
		}
		steps, err := lxdinit.Apply(ctx, c, cfg)
		if err == nil {
			t.Fatalf("Apply with driver nosuchfs succeeded: %v", steps)
		}
		for _, want := range []string{`"bad"`, `driver "nosuchfs" is not supported`, "supported: ", "dir"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %s", err, want)
			}
		}
		if len(steps) != 0 {
			t.Errorf("steps ran before the refusal: %v", steps)
		}
		after, _, _ := c.GetServer()
		if after.Config["core.https_address"] != before.Config["core.https_address"] {
			t.Errorf("core.https_address changed from %v to %v", before.Config["core.https_address"], after.Config["core.https_address"])
		}
		if _, _, err := c.GetStoragePool("bad"); err == nil {
			t.Errorf("pool bad was created")
		}
		if _, _, err := c.GetNetwork("badbr"); err == nil {
			t.Errorf("network badbr was created")
		}
		if _, _, err := c.GetProfile("bad"); err == nil {
			t.Errorf("profile bad was created")
		}
	})

	t.Run("a pool LXD cannot convert is a clear error", func(t *testing.T) {
		cfg := lxdinit.Config{
			Pool:    lxdinit.StoragePool{Name: "local", Driver: "dir", Source: "/nonexistent/elsewhere"},
			Network: lxdinit.Network{Name: "lxdbr0", IPv4Address: "auto"},
		}
		steps, err := lxdinit.Apply(ctx, h1.LXD(), cfg)
		if err == nil || !strings.Contains(err.Error(), `storage pool "local" exists on source`) {
			t.Fatalf("err = %v, want a refusal to move pool local", err)
		}
		wantActions(t, steps, lxdinit.InPlace) // the address step, not asked for
	})
}

// TestApplyBtrfs creates a btrfs pool on a loop file, the driver tests use
// where the appliance uses zfs, and refuses to turn it into another driver.
func TestApplyBtrfs(t *testing.T) {
	testenv.RequireTools(t, "mkfs.btrfs")
	bed := testbed.New(t, testbed.Options{Hosts: 1})
	c := bed.Hosts[0].LXD()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := lxdinit.Config{
		Pool:    lxdinit.StoragePool{Name: "local", Driver: "btrfs", Config: map[string]string{"size": "1GiB"}},
		Network: lxdinit.Network{Name: "lxdbr0", IPv4Address: "auto"},
	}
	steps, err := lxdinit.Apply(ctx, c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, steps, lxdinit.InPlace, lxdinit.Created, lxdinit.Created, lxdinit.Updated)
	pool, _, err := c.GetStoragePool("local")
	if err != nil || pool.Driver != "btrfs" || pool.Config["size"] != "1GiB" {
		t.Fatalf("pool local: %+v, %v; want btrfs of 1GiB", pool, err)
	}
	if steps, err = lxdinit.Apply(ctx, c, cfg); err != nil {
		t.Fatal(err)
	}
	wantActions(t, steps, lxdinit.InPlace, lxdinit.InPlace, lxdinit.InPlace, lxdinit.InPlace)

	cfg.Pool = lxdinit.StoragePool{Name: "local", Driver: "dir"}
	_, err = lxdinit.Apply(ctx, c, cfg)
	if err == nil || !strings.Contains(err.Error(), `storage pool "local" exists with driver btrfs, want dir`) {
		t.Errorf("err = %v, want a refusal to change pool local's driver", err)
	}
}

func wantActions(t *testing.T, steps []lxdinit.Step, want ...lxdinit.Action) {
	t.Helper()
	if len(steps) != len(want) {
		t.Fatalf("%d steps %v, want %d", len(steps), steps, len(want))
	}
	names := []string{lxdinit.StepHTTPSAddress, lxdinit.StepStoragePool, lxdinit.StepNetwork, lxdinit.StepProfile}
	for i, s := range steps {
		if s.Name != names[i] || s.Action != want[i] {
			t.Errorf("step %d: %s %q, want %s %q", i+1, s.Name, s.Action, names[i], want[i])
		}
	}
}

func assertProfile(t *testing.T, c lxd.InstanceServer, name, pool, network string) {
	t.Helper()
	profile, _, err := c.GetProfile(name)
	if err != nil {
		t.Fatal(err)
	}
	root, eth0 := profile.Devices["root"], profile.Devices["eth0"]
	if root["type"] != "disk" || root["path"] != "/" || root["pool"] != pool {
		t.Errorf("profile %s root device %v, want a disk at / on pool %s", name, root, pool)
	}
	if eth0["type"] != "nic" || eth0["network"] != network {
		t.Errorf("profile %s eth0 device %v, want a nic on network %s", name, eth0, network)
	}
}

// assertReachable checks that from inside host from, the LXD of host to
// answers at addr with its own certificate.
func assertReachable(t *testing.T, ctx context.Context, from, to *testbed.Host, server *api.Server, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("%s cannot reach %s's LXD at %s: %v", from.Name, to.Name, addr, err)
	}
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	defer conn.Close()
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS %s -> %s: %v", from.Name, addr, err)
	}
	block, _ := pem.Decode([]byte(server.Environment.Certificate))
	if block == nil || !bytes.Equal(conn.ConnectionState().PeerCertificates[0].Raw, block.Bytes) {
		t.Errorf("%s reached %s but not with %s's LXD certificate", from.Name, addr, to.Name)
	}
}

func isCIDR(s string) bool {
	_, err := netip.ParsePrefix(s)
	return err == nil
}

// TestApplyOnClusterMember re-runs initialisation on hosts that formed a
// cluster after their first run, as the appliance does when it restarts
// after the join: nothing may change, and the joiner, initialised the same
// way, must be able to join at all.
func TestApplyOnClusterMember(t *testing.T) {
	bed := testbed.New(t, testbed.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	configFor := func(h *testbed.Host) lxdinit.Config {
		return lxdinit.Config{
			HTTPSAddress: net.JoinHostPort(h.Address.String(), "8443"),
			Pool:         lxdinit.StoragePool{Name: "local", Driver: "dir"},
			Network:      lxdinit.Network{Name: "lxdbr0", IPv4Address: "auto"},
		}
	}
	for _, h := range bed.Hosts {
		if _, err := lxdinit.Apply(ctx, h.LXD(), configFor(h)); err != nil {
			t.Fatal(err)
		}
	}
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	start := time.Now()
	op, err := h1.LXD().UpdateCluster(api.ClusterPut{Cluster: api.Cluster{ServerName: h1.Name, Enabled: true}}, "")
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	top, err := h1.LXD().CreateClusterMember(api.ClusterMembersPost{ServerName: h2.Name})
	if err != nil {
		t.Fatal(err)
	}
	opAPI := top.Get()
	token, err := opAPI.ToClusterJoinToken()
	if err != nil {
		t.Fatal(err)
	}
	// The join as a plain script would do it.
	join := h2.Command(ctx, "lxd", "init", "--preseed")
	join.Stdin = strings.NewReader("cluster:\n  enabled: true\n  server_name: " + h2.Name +
		"\n  server_address: " + net.JoinHostPort(h2.Address.String(), "8443") +
		"\n  cluster_token: " + token.String() + "\n")
	if out, err := join.CombinedOutput(); err != nil {
		t.Fatalf("host2 joins: %v\n%s", err, out)
	}
	t.Logf("bootstrap and join took %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	defer func() { t.Logf("re-runs took %s", time.Since(start).Round(time.Millisecond)) }()
	for _, h := range bed.Hosts {
		steps, err := lxdinit.Apply(ctx, h.LXD(), configFor(h))
		if err != nil {
			t.Fatalf("%s: re-run on a cluster member: %v", h.Name, err)
		}
		wantActions(t, steps, lxdinit.InPlace, lxdinit.InPlace, lxdinit.InPlace, lxdinit.InPlace)
	}
}
